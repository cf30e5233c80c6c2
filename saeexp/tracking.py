"""MLflow: the tracking URI, the run id kept in the run directory, flattened params."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` store; None for a server."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: next to a SQLite store's file (MLflow's own default is
    ./mlruns under the current directory, which would put artifacts wherever the command ran, the repo
    root included); None for a server, which has its own artifact root."""
    db = sqlite_file(tracking_uri)
    return str(db.parent / "mlartifacts") if db else None


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the MLflow experiment once: runs that all find it missing race to create it. On a SQLite store
    under a lock next to the file, which the first run creates: MLflow migrates a new database's schema on
    first use, and two runs started together on one failed there ('Online migration expected to match one
    row'; two `saeexp` started side by side on a fresh runs folder)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from saeexp.lm.cache import exclusive_lock

    db = sqlite_file(tracking_uri)
    with exclusive_lock(db.with_name(db.name + ".lock"), f"the MLflow store {db}") if db else contextlib.nullcontext():
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
        except MlflowException:  # created meanwhile by someone else (a server's store)
            return client.get_experiment_by_name(name).experiment_id


def make_logger(cfg: DictConfig, run_dir: Path):
    """An MLFlowLogger bound to this run directory's MLflow run (created once, reused on resume)."""
    from hydra.utils import instantiate

    ensure_experiment(str(cfg.logger.tracking_uri), str(cfg.logger.experiment_name))
    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    logger = instantiate(cfg.logger, run_id=run_id, artifact_location=artifact_location(cfg.logger.tracking_uri),
                         tags={**run_tags(cfg), **dict(cfg.logger.tags or {})})
    if run_id is not None:  # resumed (e.g. a requeued SLURM job): the same run, running again
        logger.experiment.update_run(run_id, status="RUNNING")
        if os.environ.get("SLURM_JOB_ID"):
            logger.experiment.set_tag(run_id, "slurm_job_id", slurm_job_id())
    else:
        from saeexp.io import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, logger.run_id)
    return logger


def slurm_job_id() -> str:
    """`<array job>_<task>` for an array task (what `sacct -j` takes), else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def git_commit() -> str:
    """The commit of the saeexp checkout this runs from (`+dirty` with local changes), or 'unknown'."""
    import subprocess

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


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that let a sweep's runs be grouped and plotted: sweep, variant, coefficient, width, seed, commit."""
    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        variant = HydraConfig.get().runtime.choices.get("model")
    except ValueError:  # no Hydra (train called directly): the model class
        variant = None
    variant = variant or str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    from saeexp.sweep.series import coefficient

    coef = coefficient(cfg)
    tags = {"sweep": str(cfg.name), "variant": str(variant), "width": str(cfg.model.get("d_sae")),
            "coefficient": str(coef), "seed": str(cfg.seed), "git_commit": git_commit()}
    tags.update(series_tags(cfg))
    if OmegaConf.select(cfg, "paths.run_dir", default=None):
        tags[RUN_DIR_TAG] = str(cfg.paths.run_dir)
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = slurm_job_id()
    return tags


RUN_DIR_TAG, ORPHANED_TAG = "saeexp.run_dir", "saeexp.orphaned"


def series_tags(cfg: DictConfig) -> dict[str, str]:
    """The sparsity control (`sparsity_control`, `sparsity_value`) and the series the run belongs to
    (`series`, its hash; `series_exclude`, the keys it leaves out; `saeexp.choices`, the config group choices)."""
    import json

    from saeexp.sweep import series

    name, value, keys = series.control(cfg)
    params = flatten({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items()
                   if not k.startswith("hydra") and isinstance(v, str)}
    except ValueError:
        choices = {}
    return {"sparsity_control": name, "sparsity_value": value, "series_exclude": ",".join(keys),
            "series": series.series_id(series.items(params, keys)), "saeexp.choices": json.dumps(choices)}


def mark_orphaned(client, run_id: str, why: str) -> None:
    """Tag a run no run directory points to any more (the report leaves it out); gone already: nothing."""
    try:
        client.set_tag(run_id, ORPHANED_TAG, why)
    except Exception:  # noqa: BLE001 - a deleted run or another store: nothing to mark
        pass


def log_config(logger, cfg: DictConfig, run_dir: Path) -> None:
    """The flattened config as params, the composed config file as an artifact."""
    from saeexp.io import atomic_write_text

    from saeexp.redact import redact

    # secrets (URI user-info, *_token/*password*/*secret* keys) masked in params and in the config artifact
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    params = flatten({k: v for k, v in resolved.items() if k != "hydra"})
    client = logger.experiment
    existing = client.get_run(logger.run_id).data.params
    new = {k: v for k, v in params.items() if k not in existing}
    if new:
        logger.log_hyperparams(new)
    path = run_dir / "config.yaml"
    atomic_write_text(path, OmegaConf.to_yaml(resolved))
    client.log_artifact(logger.run_id, str(path))


def tracking_uri_default(runs_root: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_root}/mlflow.db"
