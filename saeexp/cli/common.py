"""The one Hydra entry every config-driven console script goes through, and the one-line error contract.

A console script is `command(config_name, task)`: Hydra composes `conf/<config_name>.yaml` with the command
line, the guard (saeexp.cli.guard) checks it before Hydra writes anything, and `task(cfg)` turns it into a
plan and runs it. An error a user can act on is one line on stderr, `saeexp: error: ...`, exit 2; under `-m`
it is re-raised so that the launcher records that job as failed and the sweep goes on. A run stopped by SIGTERM
or SIGINT (saeexp.train.stop) is one line too, and exit 128 + the signal number.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Callable, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import saeexp.build.resolvers  # noqa: F401  (the config tree's resolvers, before Hydra composes)
from saeexp.build.checks import coefficient_note
from saeexp.build.plan import multirun
from saeexp.cli.refuse import discard_created, fail
from saeexp.cli.renamed import check_argv
from saeexp.configtree import conf_dir
from saeexp.errors import ConfigError, StorageError, TrainingDiverged
from saeexp.train.stop import Stopped
from saeexp.util.redact import redact_log_records, redact_text

T = TypeVar("T")
USER_ERRORS = (ConfigError, TrainingDiverged, StorageError)
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
SHOWS_CONFIG = {"--cfg", "-c", "--info", "-i"}  # Hydra's flags that print the composed config and stop
# MLflow prints "View run ... at: <tracking URI>" on each run's end, user-info (a password) included; saeexp
# prints its own line with the URI masked (saeexp.jobs.train)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
redact_log_records()


def run_task(task: Callable[[DictConfig], object], cfg: DictConfig):
    """`task(cfg)` with the error contract: user errors as one line (the refused command's fresh run directory
    removed); a disk that filled up or turned read-only mid-run named by its file."""
    try:
        return task(cfg)
    except Stopped as e:  # a signal asked to stop: the whole command stops, a sweep's next jobs included
        print(f"saeexp: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        err: Exception = StorageError(f"cannot write {e.filename or 'a file'!r}: {e.strerror}")
    except USER_ERRORS as e:
        err = e
    if multirun():
        raise err
    discard_created()  # refused before training: no run directory left behind
    fail(err)


def command(config_name: str, task: Callable[[DictConfig], object], argv_rewrite=None) -> Callable[[], None]:
    """A console script's main: renamed keys refused before Hydra, then Hydra over `conf/<config_name>.yaml`."""

    @hydra.main(config_path=conf_dir(), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig):
        return run_task(task, cfg)

    def main() -> None:
        if argv_rewrite is not None:
            sys.argv = argv_rewrite(sys.argv)
        try:
            check_argv(sys.argv[1:])
        except ConfigError as e:
            fail(e)
        if not SHOWS_CONFIG & set(sys.argv[1:]):
            _main()
            return
        # Hydra prints the config itself, past every callback: mask the secrets a command line put in it
        shown = io.StringIO()
        try:
            with contextlib.redirect_stdout(shown):
                _main()
        finally:
            sys.stdout.write(redact_text(shown.getvalue()))

    return main


def argparse_errors(fn: Callable[[], T]) -> T:
    """The error contract for the argparse scripts: a user error is one line, exit 2."""
    try:
        return fn()
    except USER_ERRORS as e:
        fail(e)


def note_coefficient(cfg: DictConfig) -> None:
    """Say so when a coefficient on the command line only starts a target-L0 run (saeexp.build.checks)."""
    note = coefficient_note(cfg, list(HydraConfig.get().overrides.task)) if HydraConfig.initialized() else None
    if note:
        print(note, file=sys.stderr)
