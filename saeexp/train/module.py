"""A thin LightningModule: wires the SAE, the loss terms, the optimiser and the logs. The math is elsewhere."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from saeexp.checks import check_grad_clip
from saeexp.losses.base import LossTerm
from saeexp.losses.recon import MSE
from saeexp.metrics import batch_metrics, decoder_mmcs
from saeexp.sae.base import SAE
from saeexp.train.step import clip_grad, make_optimizer


DEC_MMCS_EVERY_LOGS = 10  # train/dec_mmcs is logged at every 10th log step (and the last step)


def linear_ramp(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class SAEModule(L.LightningModule):
    """Trains one SAE on batches of raw activations (scaled here by `input_scale`)."""

    def __init__(self, sae: SAE, penalties: list[LossTerm], optimizer_factory, total_steps: int,
                 input_scale: float = 1.0, lr_warmup_steps: int = 0, lr_decay_steps: int = 0,
                 sparsity_warmup_steps: int = 0, log_every: int = 50, dead_window_tokens: int = 1_000_000,
                 resampler=None, reuse_memory: bool = True, target_l0=None, grad_clip: float | None = None):
        super().__init__()
        self.sae = sae
        self.terms = nn.ModuleList([MSE(1.0), *penalties])
        for t in self.terms:
            t.validate(sae)
        self.optimizer_factory = optimizer_factory
        self.total_steps, self.input_scale = total_steps, float(input_scale)
        self.lr_warmup_steps, self.lr_decay_steps = lr_warmup_steps, lr_decay_steps
        self.sparsity_warmup_steps, self.log_every = sparsity_warmup_steps, log_every
        self.dead_window_tokens = dead_window_tokens
        self.resampler = resampler
        self.reuse_memory = reuse_memory
        self.target_l0 = target_l0  # saeexp.train.target_l0.TargetL0, or None: a fixed coefficient
        check_grad_clip(grad_clip)
        self.grad_clip = grad_clip  # max gradient norm on the loss summed over d_in (saeexp.train.step.clip_grad)
        # first step whose loss was not finite (-1: none); a device tensor, read only at log steps
        self.register_buffer("first_bad_step", torch.tensor(-1, dtype=torch.long))

    # --- schedules: pure functions of the step, so a resumed run continues them exactly -----------
    def lr_factor(self, step: int) -> float:
        f = linear_ramp(step, self.lr_warmup_steps)
        if self.lr_decay_steps > 0:
            f = min(f, max(0.0, (self.total_steps - step) / self.lr_decay_steps))
        if self.resampler is not None:
            f *= self.resampler.lr_factor(step)
        return f

    def sparsity_factor(self, step: int) -> float:
        return linear_ramp(step, self.sparsity_warmup_steps)

    # --- the step -----------------------------------------------------------------------------------
    def loss_terms(self, x_BD: Tensor, step: int):
        out = self.sae(x_BD)
        warm = self.sparsity_factor(step)
        if self.target_l0 is not None:
            warm = warm * self.target_l0.scale()
        terms = {}
        for t in self.terms:
            v = t(x_BD, out, self.sae)
            terms[t.name] = v * warm if t.is_sparsity else v
        terms.update(out.aux_losses)
        return out, terms

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        step = self.global_step
        x_BD = batch * self.input_scale if self.input_scale != 1.0 else batch
        out, terms = self.loss_terms(x_BD, step)
        if self.target_l0 is not None:
            self.target_l0.observe(out.acts_BF, step)
        loss = sum(terms.values())
        self.sae.update_firing(out.acts_BF)
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step.copy_(torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step))
        if self.resampler is not None:
            self.resampler.observe(self, x_BD, out, step)
        if step % self.log_every == 0 or step == self.total_steps - 1:
            self._log_step(x_BD, out, terms, loss)
        return loss

    def _log_step(self, x_BD, out, terms, loss) -> None:
        logs = {f"loss/{k}": v.detach() for k, v in terms.items()}
        logs["loss/total"] = loss.detach()
        logs.update({f"train/{k}": v for k, v in batch_metrics(x_BD, out.x_hat_BD.detach(), out.acts_BF).items()})
        logs["train/dead_frac"] = self.sae.dead_mask(self.dead_window_tokens).float().mean()
        logs["train/lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        if self.target_l0 is not None:
            logs["train/sparsity_scale"] = self.target_l0.scale()
        step = self.global_step
        if (step // self.log_every) % DEC_MMCS_EVERY_LOGS == 0 or step == self.total_steps - 1:
            # decoder geometry: d_sae^2 * d_in FLOPs (about one step's at width 16384), so every 10th log only
            logs["train/dec_mmcs"] = decoder_mmcs(self.sae.W_dec.detach()).mean()
        # straight to the loggers, once per log step: Lightning's self.log would re-send the last value of
        # every step metric at every later step. One host sync here (the stack), none on other steps.
        keys = list(logs)
        values = torch.stack([logs[k].detach().float().reshape(()).to(x_BD.device) for k in keys]).tolist()
        for lg in self.loggers:
            lg.log_metrics(dict(zip(keys, values)), step=step)
        # the progress bar only (logger=False): L0 and FVU as of the last log step
        self.log_dict({"L0": logs["train/l0"], "FVU": logs["train/fvu"]}, prog_bar=True, logger=False,
                      on_step=True, on_epoch=False, batch_size=x_BD.shape[0])

    def on_fit_start(self) -> None:
        if self.reuse_memory:
            from saeexp.train.memory import reuse_freed_memory

            reuse_freed_memory()

    # --- decoder-norm handling around the optimiser step ------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        if self.sae.unit_norm:
            self.sae.remove_parallel_grad()
        clip_grad(self.sae, self.grad_clip)

    def optimizer_step(self, *args, **kwargs) -> None:
        # right after the step, before any callback (a checkpoint must see renormalised rows)
        super().optimizer_step(*args, **kwargs)
        if self.sae.unit_norm:
            self.sae.normalize_decoder()
        if self.resampler is not None:
            self.resampler.maybe_resample(self, self.global_step)

    def configure_optimizers(self):
        opt = make_optimizer(self.optimizer_factory, self.sae)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
