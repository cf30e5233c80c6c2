"""The classes Hydra instantiates for `hydra/launcher=packed` (Hydra only loads launchers from `hydra_plugins`).

The code is saeexp.cli.packed; this module only names it where Hydra looks.
"""
from saeexp.cli import packed as _packed


class PackedLauncher(_packed.PackedLauncher):
    """A sweep's jobs trained in packs that share one activation stream (saeexp.cli.packed)."""
