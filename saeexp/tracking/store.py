"""The MLflow store: the experiment created once, where artifacts go, the tags a report reads."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from saeexp.util.files import exclusive_lock

RUN_DIR_TAG, ORPHANED_TAG = "saeexp.run_dir", "saeexp.orphaned"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` store; None for a server."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: next to a SQLite store's file (MLflow's own default is
    ./mlruns under the current directory, which would put artifacts wherever the command ran, the repo
    root included); None for a server, which has its own artifact root."""
    db = sqlite_file(tracking_uri)
    return str(db.parent / "mlartifacts") if db else None


def default_tracking_uri() -> str:
    """The same default as `conf/logger/mlflow.yaml`: MLFLOW_TRACKING_URI, else <runs root>/mlflow.db."""
    runs = os.environ.get("SAEEXP_RUNS") or str(Path.cwd() / "runs")
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs}/mlflow.db"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the MLflow experiment once: runs that all find it missing race to create it. On a SQLite store
    under a lock next to the file, which the first run creates: MLflow migrates a new database's schema on
    first use, and two runs started together on one failed there ('Online migration expected to match one
    row'; two `saeexp` started side by side on a fresh runs folder)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 - mlflow is heavy (seconds to import): only code that talks to a store imports it
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - as above

    db = sqlite_file(tracking_uri)
    with exclusive_lock(db.with_name(db.name + ".lock"), f"the MLflow store {db}") if db else contextlib.nullcontext():
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
        except MlflowException:  # created meanwhile by someone else (a server's store)
            created = client.get_experiment_by_name(name)
            if created is None:
                raise
            return created.experiment_id


def git_commit() -> str:
    """The commit of the saeexp checkout this runs from (`+dirty` with local changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return os.environ.get("SAEEXP_GIT_COMMIT", "unknown")
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return os.environ.get("SAEEXP_GIT_COMMIT", "unknown")


def mark_orphaned(client, run_id: str, why: str) -> None:
    """Tag a run no run directory points to any more (the report leaves it out); gone already: nothing."""
    try:
        client.set_tag(run_id, ORPHANED_TAG, why)
    except Exception:  # noqa: BLE001 - a deleted run or another store: nothing to mark
        pass
