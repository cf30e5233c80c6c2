"""`SweepSetup`, a Hydra callback run once per `saeexp -m` on the submitting host, before any job starts.

It creates the sweep's MLflow experiment (concurrent jobs would race to), builds the activation cache the sweep's
jobs share (one harvest per sweep, never one per job), and warns when many SLURM jobs would write one SQLite store.
"""
from __future__ import annotations

import logging
import time

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from saeexp.build.plan import plain
from saeexp.build.saved import prepare_data
from saeexp.data.base import ActivationSource
from saeexp.tracking.store import ensure_experiment

log = logging.getLogger(__name__)


def _has_cache(data_cfg) -> bool:
    """Whether the source's class overrides `prepare` (synthetic data builds nothing)."""
    try:
        cls = get_class(str(data_cfg._target_))
    except Exception:  # noqa: BLE001 - an unknown class fails later, in the jobs, with a clearer error
        return False
    return getattr(cls, "prepare", None) is not ActivationSource.prepare


def _on_slurm(config: DictConfig) -> bool:
    return "SlurmLauncher" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


class SweepSetup(Callback):
    """harvest: `auto` (a SLURM job before the array under the SLURM launcher, else on this host), `host`,
    `slurm` or `none` (each job calls `prepare()`; the first builds the cache while the others wait on its lock).
    """

    def __init__(self, harvest: str = "auto", harvest_timeout_min: float | None = None):
        if harvest not in ("auto", "host", "slurm", "none"):
            raise ValueError(f"hydra.callbacks.sweep.harvest={harvest!r}: expected auto | host | slurm | none")
        self.harvest, self.timeout_min = harvest, harvest_timeout_min

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Hydra sets this only per job, later; without it `${hydra:runtime.cwd}` (paths.runs_root, hence the
        # sweep dir and the submitit folder) cannot resolve when the submitit launcher is built
        HydraConfig.instance().set_config(config)
        slurm = _on_slurm(config)
        uri = str(OmegaConf.select(config, "logger.tracking_uri", default=""))
        if slurm and uri.startswith("sqlite:"):
            log.warning("MLflow store %s is SQLite: concurrent SLURM jobs may hit 'database is locked'. Start a "
                        "server (scripts/mlflow-server.sh start DIR PORT) and export MLFLOW_TRACKING_URI.", uri)
        ensure_experiment(uri, str(OmegaConf.select(config, "logger.experiment_name")))
        mode = ("slurm" if slurm else "host") if self.harvest == "auto" else self.harvest
        if mode == "none" or not _has_cache(config.data):
            return
        data = plain(config.data)
        if mode == "host":
            log.info("harvest before the sweep, on this host: %s", data.get("_target_"))
            out = prepare_data(data)
        else:
            out = self._on_slurm_job(config, data)
        log.info("activation cache ready in %.1f s: %s", out["seconds"], out["describe"])

    def _on_slurm_job(self, config: DictConfig, data: dict) -> dict:
        """One SLURM job, with the sweep's own resources, that builds the cache before the array is submitted."""
        import submitit  # noqa: PLC0415 - only the SLURM launcher path submits jobs

        launcher = plain(config.hydra.launcher)
        folder = f"{config.hydra.sweep.dir}/.submitit/harvest/%j"
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        keys = ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "setup", "qos", "account",
                "constraint", "gres", "additional_parameters")
        params = {k: launcher[k] for k in keys if launcher.get(k) is not None}
        base = {k: params.pop(k) for k in ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min") if k in params}
        ex.update_parameters(name="saeexp-harvest", **base, **{f"slurm_{k}": v for k, v in params.items()})
        job = ex.submit(prepare_data, data)
        log.info("harvest before the sweep: SLURM job %s (%s)", job.job_id, data.get("_target_"))
        timeout = 60 * (self.timeout_min or launcher.get("timeout_min") or 60)
        return result_within(job, timeout)


def result_within(job, timeout: float, poll: float = 1.0):
    """`job.result()` with a deadline (submitit's has none): cancel the job and raise TimeoutError after it."""
    t_end = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > t_end:
            job.cancel()
            raise TimeoutError(f"SLURM job {job.job_id} did not finish in {timeout:.0f} s")
        time.sleep(poll)
    return job.result()
