"""Names typed by a user that become paths (experiment, run name) stay one directory inside their root."""
from __future__ import annotations

import os
from pathlib import Path

from saeexp.errors import ConfigError

MAX_NAME = 200  # below the 255-byte limit of common filesystems, with room for suffixes (.tmp, .old)


def path_part(key: str, value) -> str:
    """`value` as one directory name; a ConfigError for '', '.', '..', a path separator or an absolute path."""
    name = str(value)
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or os.path.isabs(name) or name != name.strip() or len(name) > MAX_NAME)
    if bad:
        raise ConfigError(f"{key}={name!r}: expected a plain name (no '/', '\\', '..' or absolute path, at most "
                          f"{MAX_NAME} characters): it names a directory inside the runs root")
    return name


def check_inside(root, path, key: str) -> Path:
    """`path` resolved, refused unless it lies inside `root` (symlinks followed)."""
    root_r, path_r = Path(root).expanduser().resolve(), Path(path).expanduser().resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ConfigError(f"{key}={str(path)!r}: resolves to {str(path_r)!r}, outside {str(root_r)!r}")
    return path_r
