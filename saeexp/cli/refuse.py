"""A refused command: one line on stderr, exit 2, and nothing of it left on disk."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import NoReturn

from saeexp.util.redact import redact_text

created: list[Path] = []  # directories this command will create (deepest first); cleared by each run


def fail(e: Exception) -> NoReturn:
    """One line on stderr (secrets masked), exit 2."""
    print(f"saeexp: error: {redact_text(str(e))}", file=sys.stderr)
    sys.exit(2)


def discard_created() -> None:
    """Remove what this command created if it holds nothing but Hydra's own files (a command refused before
    training); a directory with anything else in it (a run, a checkpoint, an MLflow run id) is kept."""
    if not created:
        return
    run_dir = created[0]
    if run_dir.is_dir():
        hydra_files = {".hydra"} | {p.name for p in run_dir.glob("*.log")}  # Hydra's saved config, job log
        if {p.name for p in run_dir.iterdir()} <= hydra_files:
            for name in hydra_files:
                p = run_dir / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for d in created:  # deepest first: the first that is not empty ends the walk
        try:
            d.rmdir()
        except OSError:
            break
    created.clear()


def remember_created(run_dir: Path) -> None:
    """Note the directories that creating `run_dir` will make (deepest first), for `discard_created`."""
    created.clear()
    p = run_dir.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
