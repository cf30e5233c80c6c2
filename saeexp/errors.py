"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""


class ConfigError(ValueError):
    """A bad value in the configuration or input; the message names it and what was expected."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class StorageError(RuntimeError):
    """A file could not be written (disk full, read-only); what was written before it is kept."""
