"""MLflow: the tracking URI, the run id kept in the run directory, flattened params."""
from __future__ import annotations

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


def make_logger(cfg: DictConfig, run_dir: Path):
    """An MLFlowLogger bound to this run directory's MLflow run (created once, reused on resume)."""
    from lightning.pytorch.loggers import MLFlowLogger

    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment, tracking_uri=cfg.logger.tracking_uri,
                          run_name=cfg.logger.run_name, run_id=run_id, tags=dict(cfg.logger.tags or {}))
    if run_id is None:
        from saeexp.io import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, logger.run_id)
    return logger


def log_config(logger, cfg: DictConfig, run_dir: Path) -> None:
    """The flattened config as params, the composed config file as an artifact."""
    from saeexp.io import atomic_write_text

    resolved = OmegaConf.to_container(cfg, resolve=True)
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
