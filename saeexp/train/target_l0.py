"""Training to a target L0 (`train.target_l0`): a controller on log lambda for penalty variants, k for TopK ones.

Penalty variants: lambda_t = coef * exp(u_t). After the sparsity warm-up, u follows the log error of the batch
L0, e = log(L0 / target), through a PI controller (u = I + KP * e', I += KI * e', e' the error a few steps
ahead): too many active features raise lambda, too few lower it, by factors, so one gain serves coefficients of
any magnitude (the configured coefficient is only the starting point). For the last 20% of the
run (or the LR decay, if longer) u is frozen, so the run ends as a fixed-coefficient SAE trained with a
decaying LR at the settled lambda, which is logged as `final/sparsity_coef`.
u is a buffer: it is saved in checkpoints and a resumed run continues it exactly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Per-step gains on the log error. L0 lags lambda (the encoder needs some tens of Adam steps to follow), so the
# controller acts on where the error is heading, e + HORIZON * (its trend, an EMA of its change per step):
# while L0 is already falling fast toward the target, lambda stops rising (no windup, no overshoot that would
# kill features a lower lambda cannot revive). KI: lambda moves by a factor e in ~10 steps while L0 is e x target.
# Why a long horizon and a quick integral: an undershoot is hardly undone. Once L0 falls through the target, a
# lower lambda slows the fall but barely reverses it (measured: SCSAE, whose bias is not in its output, with the
# fitted encoder init kept falling from 16 to 14 while lambda halved; JumpReLU's thresholds the same at 600
# steps while lambda fell 5x), and with lambda frozen it falls a few % more. So the controller brakes 75 steps
# ahead and gets there soon, leaving the frozen phase only that residual drift (was KI 0.03, HORIZON 50: SCSAE
# ended 14% under). Tuned on the synthetic data (tests/test_target_l0.py: relu, gated, jumprelu, scsae within
# 5% in 400 steps at lr 4e-3; in 600 steps JumpReLU still ends 12% under, scsae within 5%).
KI, KP = 0.1, 1.0
HORIZON, SLOPE_EMA = 75.0, 0.95
FREEZE_FRACTION = 0.2
U_LIMIT = 25.0  # |log factor| at most: lambda within coef * e^+-25, far past any useful value


class TargetL0(nn.Module):
    """Scales the sparsity penalties by exp(u); `observe` moves u toward the target between start and freeze."""

    integral: Tensor
    u: Tensor
    last_e: Tensor
    slope: Tensor

    def __init__(self, target_l0: float, start_step: int, freeze_step: int):
        super().__init__()
        self.target_l0, self.start_step, self.freeze_step = float(target_l0), int(start_step), int(freeze_step)
        self.register_buffer("integral", torch.zeros(()))
        self.register_buffer("u", torch.zeros(()))
        self.register_buffer("last_e", torch.full((), float("nan")))
        self.register_buffer("slope", torch.zeros(()))

    def scale(self) -> Tensor:
        return self.u.exp()

    @torch.no_grad()
    def observe(self, acts_BF: Tensor, step: int) -> None:
        """One controller update from this batch's activations (device tensors only: no host sync)."""
        if not self.start_step <= step < self.freeze_step:
            return
        l0 = (acts_BF > 0).sum() / acts_BF.shape[0]
        e = (l0.float().clamp_min(0.1) / self.target_l0).log()
        # the trend of the error (EMA of its change): L0 lags lambda, so act on where it is heading
        d = torch.where(self.last_e.isnan(), torch.zeros_like(e), e - self.last_e)
        self.slope.mul_(SLOPE_EMA).add_((1 - SLOPE_EMA) * d)
        self.last_e.copy_(e)
        e_ahead = e + HORIZON * self.slope
        self.integral.add_(KI * e_ahead).clamp_(-U_LIMIT, U_LIMIT)
        self.u.copy_((self.integral + KP * e_ahead).clamp(-U_LIMIT, U_LIMIT))
        if step == self.freeze_step - 1:  # the frozen value: the integral alone, without the last error's kick
            self.u.copy_(self.integral)


def controller(target_l0: float | None, sparsity_control: str, total_steps: int, sparsity_warmup_steps: int,
               lr_decay_steps: int) -> TargetL0 | None:
    """The controller for this run, or None (no target, or a k-controlled SAE whose k the target already set)."""
    if target_l0 is None or sparsity_control == "k":
        return None
    frozen = max(lr_decay_steps, math.ceil(FREEZE_FRACTION * total_steps))
    return TargetL0(target_l0, start_step=sparsity_warmup_steps, freeze_step=total_steps - frozen)


def settled_coef(penalties: list, ctl: TargetL0 | None) -> float | None:
    """The sparsity coefficient the run ended with (the configured one when no controller moved it)."""
    coefs = [p.coef for p in penalties if p.is_sparsity]
    if not coefs:
        return None
    return coefs[0] * (float(ctl.scale()) if ctl is not None else 1.0)
