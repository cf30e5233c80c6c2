"""Preemption under submitit: save `last.ckpt` at a batch boundary, then let submitit requeue the job.

submitit installs a handler for `$SUBMITIT_PREEMPT_SIGNAL` (USR2) that checkpoints the launched callable,
runs `scontrol requeue` and exits at once, wherever the signal lands (mid optimiser step included).
`PreemptionCheckpoint` takes that signal over: it only records it, and at the next batch end saves the run
checkpoint and stops the trainer. `train` then returns as interrupted and `requeue_if_preempted` (called by
the CLI's task function) hands the signal to submitit's handler, which requeues. The requeued job re-runs the
same Hydra job: same overrides, same run directory, so `train` resumes from the checkpoint and reuses the
MLflow run id kept there. Lightning's own SLURM requeue (USR1) is switched off by `slurm_plugins`, so only
submitit requeues.
"""
from __future__ import annotations

import os
import signal
import warnings

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from saeexp.train.callbacks import RunCheckpoint
from saeexp.train.stop import Stopped
from saeexp.util.slurm import at_time_limit

_pending: dict = {}  # the signal received and submitit's handler, for requeue_if_preempted


def _submitit_handler(signum):
    """The handler submitit installed for `signum`, or None when not running under submitit."""
    h = signal.getsignal(signum)
    owner = getattr(h, "__self__", None)
    return h if owner is not None and type(owner).__module__.startswith("submitit") else None


def preempt_signal() -> signal.Signals:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class PreemptionCheckpoint(Callback):
    """On submitit's preemption/timeout signal: checkpoint at the next batch end and stop (inert elsewhere)."""

    def __init__(self):
        self.signum = preempt_signal()
        self.received = False

    def on_fit_start(self, trainer, module) -> None:
        handler = _submitit_handler(self.signum)
        if handler is None:
            return
        _pending.clear()
        _pending["handler"] = handler

        def note(signum, frame):
            print(f"saeexp: received {signal.Signals(signum).name}: checkpointing at the next step", flush=True)
            self.received = True

        signal.signal(self.signum, note)

    def on_train_start(self, trainer, module) -> None:
        if trainer.global_step > 0 and trainer.logger is not None:  # resumed from a checkpoint: say from where
            print(f"saeexp: resumed at step {trainer.global_step}", flush=True)
            client, run_id = trainer.logger.experiment, trainer.logger.run_id
            client.set_tag(run_id, "saeexp.resumed_at_step", str(trainer.global_step))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.received or trainer.should_stop:
            return
        saver = next(c for c in trainer.callbacks if isinstance(c, RunCheckpoint))
        saved = saver.save(trainer)
        step = trainer.global_step
        print(f"saeexp: preempted at step {step}; checkpoint {'saved' if saved else 'NOT saved (unhealthy)'}",
              flush=True)
        _pending.update(step=step, saved=saved, run_id=getattr(trainer.logger, "run_id", None),
                        client=getattr(trainer.logger, "experiment", None))
        trainer.should_stop = True

    def on_fit_end(self, trainer, module) -> None:
        if not self.received and "handler" in _pending:
            # training ended before any signal: give submitit its handler back for the rest of the job
            signal.signal(self.signum, _pending.pop("handler"))


def time_limit_requeue(stopped: Stopped, logger) -> bool:
    """Under submitit, SLURM's SIGTERM at the job's time limit (no warning signal came, or it came too late)
    is a time-out as submitit counts them: note it so that `requeue_if_preempted` requeues the job."""
    handler = _submitit_handler(preempt_signal())
    if stopped.signum != signal.SIGTERM or not stopped.saved or handler is None or not at_time_limit():
        return False
    _pending.clear()
    _pending.update(handler=handler, step=stopped.step, saved=True, run_id=getattr(logger, "run_id", None),
                    client=getattr(logger, "experiment", None))
    print(f"saeexp: SLURM time limit at step {stopped.step}; checkpoint saved, requeueing", flush=True)
    return True


def mark_preempted(client, run_id: str, step: int) -> None:
    """Count the preemption on the MLflow run, say at which step, and mark it SCHEDULED (waiting for its requeue)."""
    n = int(client.get_run(run_id).data.tags.get("saeexp.preemptions", "0")) + 1
    client.set_tag(run_id, "saeexp.preemptions", str(n))
    client.set_tag(run_id, "saeexp.preempted_at_step", str(step))
    client.update_run(run_id, status="SCHEDULED")


def requeue_if_preempted() -> None:
    """If a preemption stopped training, mark the MLflow run and let submitit requeue (does not return)."""
    if "step" not in _pending:
        return
    client, run_id = _pending.get("client"), _pending.get("run_id")
    if client is not None and run_id:
        # Lightning closed the run as FINISHED when the trainer stopped; it is not: it waits for its requeue
        mark_preempted(client, run_id, _pending["step"])
    handler = _pending.pop("handler")
    signum = preempt_signal()
    signal.signal(signum, handler)
    handler(signum, None)  # submitit: dump the resubmission, `scontrol requeue`, sys.exit


def slurm_plugins():
    """Trainer plugins: under SLURM, Lightning's environment without its own USR1 auto-requeue."""
    # detect() also warns when `srun` exists but did not start us: true of any SLURM login node, where a plain
    # `saeexp` run is intended; the warning would precede every one-line refusal there
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `srun` command is available")
        if not SLURMEnvironment.detect():
            return None
    return [SLURMEnvironment(auto_requeue=False)]
