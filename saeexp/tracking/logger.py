"""The run's MLflow logger: one MLflow run per run directory (reused on resume), never failing a long job for a
logging blip."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from saeexp.plan import Tracking
from saeexp.tracking.store import artifact_location, ensure_experiment
from saeexp.util.files import atomic_write_text
from saeexp.util.redact import redact_text
from saeexp.util.slurm import slurm_job_id

STOPPED_TAG = "saeexp.stopped_by"  # the signal that stopped the run's last attempt
STALE_ON_RESUME = ("failure_reason", STOPPED_TAG)
MAX_PENDING = 10_000  # metric batches kept through an outage (oldest dropped first): bounded memory


class BufferedMLFlowLogger(MLFlowLogger):
    """Metrics that MLflow could not take (after its own retries) are kept and sent again at the next log.

    One warning line per outage; the job goes on. Marking a run FAILED never raises either, so the error that
    stopped a job is the one the user sees, even when the store itself is unreachable or on a full disk.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[dict, int | None]] = []
        self._outage = False

    def _warn(self, what: str, e: Exception) -> None:
        print(f"saeexp: warning: MLflow {what} failed ({redact_text(f'{type(e).__name__}: {e}')[:300]}); "
              "training goes on, metrics are kept and sent again at the next log", file=sys.stderr)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._pending.append((dict(metrics), step))
        del self._pending[:-MAX_PENDING]
        self.flush_pending()

    def flush_pending(self) -> bool:
        """Send what is pending, oldest first; False (and the rest kept) at the first failure."""
        while self._pending:
            metrics, step = self._pending[0]
            try:
                super().log_metrics(metrics, step)
            except Exception as e:  # noqa: BLE001 - any store failure: keep the metrics, go on training
                if not self._outage:
                    self._warn("logging", e)
                self._outage = True
                return False
            self._pending.pop(0)
        if self._outage:
            print("saeexp: MLflow logging works again; the kept metrics were sent", file=sys.stderr)
        self._outage = False
        return True

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        try:
            self.flush_pending()
            super().finalize(status)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            self._warn(f"finalize({status})", e)

    def mark_failed(self, reason: str) -> None:
        """Tag the run with why it failed and mark it FAILED; a failure to do so is one warning line."""
        try:
            self.experiment.set_tag(self.run_id, "failure_reason", reason[:5000])
        except Exception as e:  # noqa: BLE001
            self._warn("set_tag(failure_reason)", e)
            return
        self.finalize("failed")

    def mark_killed(self, signal_name: str, reason: str) -> None:
        """Mark the run KILLED (stopped by `signal_name`, resumable) with the reason; never raises either."""
        try:
            self.flush_pending()
            self.experiment.set_tag(self.run_id, STOPPED_TAG, signal_name)
            self.experiment.set_tag(self.run_id, "failure_reason", reason)
            self.experiment.set_terminated(self.run_id, "KILLED")
        except Exception as e:  # noqa: BLE001
            self._warn("set_terminated(KILLED)", e)


def _clear_stale_tags(client, run_id: str) -> None:
    """A resumed run no longer failed or stopped: the tags of its earlier attempt would describe the wrong state."""
    tags = client.get_run(run_id).data.tags
    for tag in STALE_ON_RESUME:
        if tag in tags:
            client.delete_tag(run_id, tag)


def open_run(tracking: Tracking, run_dir: Path):
    """The logger bound to this run directory's MLflow run: created once, its id kept in `mlflow_run_id`, reused
    (and set RUNNING again) when the run resumes, e.g. as a requeued SLURM job."""
    ensure_experiment(tracking.uri, tracking.experiment)
    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    logger = tracking.make_logger(run_id=run_id, artifact_location=artifact_location(tracking.uri))
    if run_id is not None:
        logger.experiment.update_run(run_id, status="RUNNING")
        _clear_stale_tags(logger.experiment, run_id)
        if os.environ.get("SLURM_JOB_ID"):
            logger.experiment.set_tag(run_id, "slurm_job_id", slurm_job_id())
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, logger.run_id)
    return logger


def log_config(logger, tracking: Tracking, run_dir: Path) -> None:
    """The run's params (those not logged before: a resumed run adds none) and its config.yaml artifact."""
    client = logger.experiment
    existing = client.get_run(logger.run_id).data.params
    new = {k: v for k, v in tracking.params.items() if k not in existing}
    if new:
        logger.log_hyperparams(new)
    path = run_dir / "config.yaml"
    atomic_write_text(path, tracking.config_yaml)
    client.log_artifact(logger.run_id, str(path))
