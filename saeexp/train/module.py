"""A thin LightningModule: wires the SAE, the loss terms, the optimiser and the logs. The math is elsewhere."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from saeexp.losses.base import LossTerm
from saeexp.losses.recon import MSE
from saeexp.metrics import batch_metrics, decoder_mmcs
from saeexp.sae.base import SAE
from saeexp.train.memory import release_freed_memory, reuse_freed_memory
from saeexp.train.step import (
    Recipe,
    after_optimizer_step,
    before_optimizer_step,
    linear_ramp,
    make_optimizer,
    step_losses,
)
from saeexp.util import ranks

DEC_MMCS_EVERY_LOGS = 10  # train/dec_mmcs is logged at every 10th log step (and the last step)


class SAEModule(L.LightningModule):
    """Trains one SAE on batches of raw activations (scaled here by `input_scale`)."""

    first_bad_step: Tensor

    def __init__(self, sae: SAE, penalties: list[LossTerm], optimizer_factory, total_steps: int,
                 input_scale: float = 1.0, lr_warmup_steps: int = 0, lr_decay_steps: int = 0,
                 sparsity_warmup_steps: int = 0, log_every: int = 50, dead_window_tokens: int = 1_000_000,
                 reuse_memory: bool = True, target_l0=None, grad_clip: float | None = None):
        super().__init__()
        self.sae = sae
        self.terms = nn.ModuleList([MSE(1.0), *penalties])
        for term in penalties:
            term.validate(sae)
        self.optimizer_factory = optimizer_factory
        self.total_steps = total_steps
        self.lr_warmup_steps, self.lr_decay_steps = lr_warmup_steps, lr_decay_steps
        self.log_every = log_every
        self.dead_window_tokens = dead_window_tokens
        self.reuse_memory = reuse_memory
        # the step's own settings (saeexp.train.step); target_l0: a TargetL0, or None for a fixed coefficient
        self.recipe = Recipe(float(input_scale), sparsity_warmup_steps, grad_clip, target_l0)
        # registered as a submodule too: its state (the controller's log factor u) is in the checkpoint, so a resumed
        # run continues it, and it follows the module's device and precision
        self.target_ctl = target_l0
        # first step whose loss was not finite (-1: none); a device tensor, read only at log steps
        self.register_buffer("first_bad_step", torch.tensor(-1, dtype=torch.long))

    # --- schedules: pure functions of the step, so a resumed run continues them exactly -----------
    def lr_factor(self, step: int) -> float:
        f = linear_ramp(step, self.lr_warmup_steps)
        if self.lr_decay_steps > 0:
            f = min(f, max(0.0, (self.total_steps - step) / self.lr_decay_steps))
        return f

    @property
    def target_l0(self):
        return self.recipe.target_l0

    # --- the step (saeexp.train.step; Lightning runs backward and the optimiser between the hooks) ---------
    def training_step(self, batch: Tensor, batch_idx: int) -> dict:
        step = self.global_step
        x_BD, out, terms = step_losses(self.sae, self.terms, batch, step, self.recipe)
        loss = sum(terms.values())
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step.copy_(torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step))
        if step % self.log_every == 0 or step == self.total_steps - 1:
            self._log_step(x_BD, out, terms, loss)
        return {"loss": loss, "x_BD": x_BD}  # callbacks (resampling) see the step's scaled inputs

    def step_logs(self, x_BD, out, terms, loss, lr: float, step: int) -> dict[str, Tensor]:
        """A log step's metrics, as tensors on the step's device (what a packed sweep logs per SAE too)."""
        logs = {f"loss/{k}": v.detach() for k, v in terms.items()}
        logs["loss/total"] = loss.detach()
        logs.update({f"train/{k}": v for k, v in batch_metrics(x_BD, out.x_hat_BD.detach(), out.acts_BF).items()})
        logs["train/dead_frac"] = self.sae.dead_mask(self.dead_window_tokens).float().mean()
        logs["train/lr"] = torch.tensor(lr)
        if self.target_l0 is not None:
            logs["train/sparsity_scale"] = self.target_l0.scale()
        if (step // self.log_every) % DEC_MMCS_EVERY_LOGS == 0 or step == self.total_steps - 1:
            # decoder geometry: d_sae^2 * d_in FLOPs (about one step's at width 16384), so every 10th log only
            logs["train/dec_mmcs"] = decoder_mmcs(self.sae.W_dec.detach()).mean()
        return logs

    def _log_step(self, x_BD, out, terms, loss) -> None:
        opt = self.optimizers()
        opt = opt[0] if isinstance(opt, list) else opt
        logs = self.step_logs(x_BD, out, terms, loss, opt.param_groups[0]["lr"], self.global_step)
        # straight to the loggers, once per log step: Lightning's self.log would re-send the last value of
        # every step metric at every later step. One host sync here (the stack), none on other steps.
        # Data-parallel: the mean over ranks, so the logs describe the global batch (exactly for the per-token
        # means, the ranks' mean of ratios such as FVU).
        keys = list(logs)
        stacked = ranks.mean_ranks(torch.stack([logs[k].detach().float().reshape(()).to(x_BD.device) for k in keys]))
        values = dict(zip(keys, stacked.tolist()))
        for lg in self.loggers:
            lg.log_metrics(values, step=self.global_step)
        # the progress bar only (logger=False): L0 and FVU as of the last log step
        self.log_dict({"L0": values["train/l0"], "FVU": values["train/fvu"]}, prog_bar=True, logger=False,
                      on_step=True, on_epoch=False, batch_size=x_BD.shape[0])

    def on_fit_start(self) -> None:
        if self.reuse_memory:
            reuse_freed_memory()

    def on_fit_end(self) -> None:
        release_freed_memory()  # the end-of-run evaluation allocates in other sizes: see saeexp/train/memory.py

    # --- data parallelism (trainer=ddp): each rank steps on its shard of every global batch ----------------------
    def setup(self, stage: str) -> None:
        n = self.trainer.world_size
        if n > 1:  # the process group exists now: the statistics that decide something become global
            ranks.shard_over(n)
            # every rank computed the scale from the same sample; rank 0's is the run's (DDP broadcasts its weights)
            self.recipe.input_scale = float(self.trainer.strategy.broadcast(self.recipe.input_scale, src=0))

    def teardown(self, stage: str) -> None:
        ranks.shard_over(1)  # scoring and saving after the fit run on rank 0 alone: no collectives there

    # --- the step's hooks around the optimiser ---------------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        before_optimizer_step(self.sae, self.recipe)

    def optimizer_step(self, *args, **kwargs) -> None:
        # right after the step, before any callback (a checkpoint must see renormalised rows)
        super().optimizer_step(*args, **kwargs)
        after_optimizer_step(self.sae)

    def configure_optimizers(self):
        opt = make_optimizer(self.optimizer_factory, self.sae)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
