"""Where the config tree is: `conf/` inside the installed package, the one place every entry point and the
saved-SAE allow-list (saeexp.registry) look.

In the repository the tree lives at the top level (`conf/`, the layout users know) and `saeexp/conf` is a link
to it; a wheel or sdist carries the files themselves under `saeexp/conf/` (pyproject.toml's package-data), so an
installed saeexp finds them without the source tree. A user's own `--config-dir` is searched on top of it.
"""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"


def conf_dir() -> str:
    """The package's config directory as Hydra's `config_path` takes it (absolute)."""
    return str(CONF_DIR)
