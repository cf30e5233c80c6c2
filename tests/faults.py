"""Fault injection for testing sweeps.

    +callbacks.fault._target_=faults.FaultAt +callbacks.fault.kind=raise

`kind=raise` raises inside training (the job marks its MLflow run FAILED with the reason); `kind=kill` SIGKILLs
its own process, as the out-of-memory killer would (the run cannot mark itself: saeexp-pareto reconciles it);
`kind=none` does nothing, so one sweep axis `+callbacks.fault.kind=none,raise,kill` mixes healthy and faulty jobs.
"""
from __future__ import annotations

import os
import signal
import time

from lightning.pytorch.callbacks import Callback


class InjectedFault(RuntimeError):
    """The failure FaultAt raises on purpose."""


class FaultAt(Callback):
    def __init__(self, kind: str = "none", step: int = 2):
        if kind not in ("none", "raise", "kill"):
            raise ValueError(f"callbacks.fault.kind={kind!r}: expected none | raise | kill")
        self.kind, self.step = kind, step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.step or self.kind == "none":
            return
        if self.kind == "raise":
            raise InjectedFault(f"injected fault at step {trainer.global_step}")
        os.kill(os.getpid(), signal.SIGKILL)


class ReadyAt(Callback):
    """From step `step` on, each attempt of a run creates `path` once (a test then sends its signal) and sleeps
    `pace_s` after every step, so that a signal lands while training still has steps to go."""

    def __init__(self, path: str, step: int = 50, pace_s: float = 0.02):
        self.path, self.step, self.pace_s = path, step, pace_s

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.step:
            return
        if not os.path.exists(self.path):
            open(self.path, "w").close()
        time.sleep(self.pace_s)


class SlowUntilRequeued(Callback):
    """Sleeps `pace_s` after every step until SLURM requeues the job (SLURM_RESTART_COUNT set and above 0): a
    first attempt that outlasts a short time limit, and a requeued one at full speed."""

    def __init__(self, pace_s: float = 0.5):
        self.pace_s = pace_s

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
            time.sleep(self.pace_s)
