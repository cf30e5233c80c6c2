"""Resampling as a Lightning callback: it owns its schedule, the recent inputs it draws from and its LR re-warm.

The training module knows nothing of it. Per step: at batch start the learning rate the schedule set is
multiplied by the re-warm factor (1 except right after a resample); at batch end, after the optimiser step and
before any checkpoint callback (`train` lists it first), the step's scaled inputs go to the reservoir and a
scheduled resample happens. Its state (schedule, reservoir) is the callback's, saved in the checkpoint.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class Resampling(Callback):
    """Wraps a resampler (`resampler=anthropic`: saeexp.resample.anthropic.AnthropicResampler)."""

    def __init__(self, resampler):
        self.resampler = resampler

    def on_train_start(self, trainer, module) -> None:
        # after any checkpoint restore (some strategies restore after on_fit_start): the reservoir to the device
        self.resampler.to(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        f = self.resampler.lr_factor(trainer.global_step)
        if f != 1.0:  # the schedule (SAEModule.lr_factor) set this step's lr; re-warm scales it
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] *= f

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # the optimiser step just taken (0-based)
        self.resampler.observe(module, outputs["x_BD"], step)
        self.resampler.maybe_resample(module, step)

    def state_dict(self) -> dict:
        return self.resampler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.resampler.load_state_dict(state_dict)
