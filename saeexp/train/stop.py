"""SIGTERM and SIGINT while training: finish the step in progress, checkpoint, stop, and say so.

SIGTERM is what `scancel`, a SLURM time limit (before SIGKILL), `docker stop` and Kubernetes send; SIGINT is
Ctrl-C. Lightning's own handling loses the steps since the last periodic checkpoint and exits 0 on SIGTERM (its
SIGTERMException is a SystemExit without a code), so a scheduler saw success. `StopOnSignal` takes both signals
over while training: the handler only records the signal (a checkpoint written from inside a handler could catch
the optimiser mid-step); at the next batch end the run checkpoint is saved, atomically as the periodic ones, and
the trainer stops. `train` then marks the MLflow run KILLED and raises `Stopped`, which the CLI prints as one
line and turns into exit 128 + the signal number, as shells report a process killed by a signal.
"""
from __future__ import annotations

import signal
import sys

from lightning.pytorch.callbacks import Callback

from saeexp.train.callbacks import RunCheckpoint

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Training stopped on a signal after saving its checkpoint; the same command resumes."""

    def __init__(self, signum: int, step: int, saved: bool):
        self.signum, self.step, self.saved = signum, step, saved
        self.name = signal.Signals(signum).name
        kept = "checkpoint kept" if saved else "checkpoint NOT saved (unhealthy weights; the last good one kept)"
        super().__init__(f"stopped by {self.name} at step {step}; {kept}; the same command resumes")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal(Callback):
    """Record SIGTERM/SIGINT; at the next batch end save the run checkpoint and stop the trainer."""

    def __init__(self):
        self.signum: int | None = None
        self.step: int | None = None  # where training stopped for the signal (None: it had ended already)
        self.saved = False

    def _note(self, signum, frame) -> None:
        if self.signum is not None:
            # SLURM delivers a time limit's SIGTERM more than once (to the task, and again through srun): a repeat
            # is ignored. Ctrl-C twice is a person who will not wait for the step: stop now (the checkpoint on
            # disk stays whole: it is written by rename)
            if signum == signal.SIGINT:
                sys.exit(128 + signum)
            return
        self.signum = signum  # nothing printed here: a print inside a handler can re-enter a half-written line

    def on_train_start(self, trainer, module) -> None:
        # after Lightning registered its SIGTERM handler; when fit ends it puts back the handlers it found
        for s in SIGNALS:
            signal.signal(s, self._note)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        signalled = self.signum is not None
        if trainer.world_size > 1:  # data-parallel: a signal to any rank stops every rank at this step (the
            # checkpoint's save is a collective; one rank stopping alone would leave the others waiting in it)
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled or trainer.should_stop:
            return
        saver = next(c for c in trainer.callbacks if isinstance(c, RunCheckpoint))
        self.saved, self.step = saver.save(trainer), trainer.global_step
        trainer.should_stop = True

    def stopped(self) -> Stopped | None:
        """What stopped training, once `fit` has returned; None if no signal did."""
        # a signal after the last step's end stopped nothing: the run finishes as it would have
        return Stopped(self.signum, self.step, self.saved) if self.signum is not None and self.step is not None \
            else None
