"""Resampling dead features (Towards Monosemanticity, 2023, "Neuron Resampling"), `resampler=anthropic`.

At scheduled fractions of the run, every feature that has not fired over `window_tokens` is re-initialised
from an input drawn with probability proportional to ||x - x_hat||^2 (inputs the SAE reconstructs badly):
decoder row = that input normalised; encoder row = the same direction times `enc_scale` (0.2) times the mean
norm of the live features' encoder rows; encoder bias 0. The Adam moments of exactly those rows are reset
and the learning rate re-warms linearly over `rewarm_steps` (reference 000: 2k steps, matching 2 / (1 -
beta2) for beta2 = 0.999).

Inputs come from a bounded ring buffer of recent (scaled) training inputs filled in `observe`, not from the
whole data. The schedule state (which points are done, the last resample step) and the buffer are in the
state dict, so a resumed run resamples exactly as an uninterrupted one would.
"""
from __future__ import annotations

import math
import sys
import warnings

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from saeexp.errors import ConfigError


@torch.no_grad()
def reset_adam_rows(optimizer: torch.optim.Optimizer, param: Tensor, dim: int, idx: Tensor) -> None:
    """Zero Adam's moment estimates of `param` at indices `idx` along `dim`; the rest of its state is kept."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        t = state.get(key)
        if isinstance(t, Tensor) and t.shape == param.shape:
            t.index_fill_(dim, idx.to(t.device), 0.0)


@torch.no_grad()
def resample_features(sae, idx: Tensor, x_ND: Tensor, optimizer=None, enc_scale: float = 0.2,
                      generator: torch.Generator | None = None, batch_size: int = 4096) -> Tensor:
    """Re-initialise features `idx` of `sae` from inputs x_ND (scaled space); returns the chosen input rows."""
    device = sae.W_dec.device
    idx = idx.to(device)
    # ||x - x_hat||^2 of each input under the current SAE (eval mode: no running statistics move)
    was_training = sae.training
    sae.eval()
    # the reservoir is float32; the SAE's weights may be another dtype (trainer.precision=64-true, bf16-true)
    x_ND = x_ND.to(sae.W_dec.dtype)
    err = torch.cat([(sae(x_ND[lo:lo + batch_size]).x_hat_BD - x_ND[lo:lo + batch_size]).pow(2).sum(dim=1)
                     for lo in range(0, x_ND.shape[0], batch_size)]).float()
    sae.train(was_training)
    weights = err if err.sum() > 0 else torch.ones_like(err)
    # distinct inputs when there are enough (as dictionary_learning's resampling): with replacement, two dead
    # features can get the same input and become exact clones, which then tie in a TopK selection forever
    distinct = int((weights > 0).sum()) >= idx.numel()
    pick = torch.multinomial(weights.cpu(), idx.numel(), replacement=not distinct, generator=generator).to(device)
    dirs_ND = x_ND[pick].float()
    dirs_ND = dirs_ND / dirs_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)

    live_F = torch.ones(sae.d_sae, dtype=torch.bool, device=device)
    live_F[idx] = False
    sae.W_dec[idx] = dirs_ND.to(sae.W_dec.dtype)
    touched = [(sae.W_dec, 0)]
    for name, dim in sae.encoder_rows:
        p = getattr(sae, name)
        if p.ndim == 2:
            # mean norm of the live features' encoder rows (W[:, i] for dim=1); 1.0 if none is live
            norms_F = p.norm(dim=1 - dim)
            ref = norms_F[live_F].mean() if live_F.any() else norms_F.new_tensor(1.0)
            new = dirs_ND * (enc_scale * ref)
            p.index_copy_(dim, idx, (new.t() if dim == 1 else new).to(p.dtype))
        else:
            p[idx] = 0.0
        touched.append((p, dim))
    if optimizer is not None:
        for p, dim in touched:
            reset_adam_rows(optimizer, p, dim, idx)
    sae.tokens_since_fired[idx] = 0  # a fresh feature gets a full window before it can count as dead
    return pick


class AnthropicResampler(nn.Module):
    """Resample dead features at fractions `at` of the run; re-warm the LR over `rewarm_steps` afterwards."""

    reservoir_ND: Tensor

    def __init__(self, at=(0.125, 0.25, 0.375, 0.5), window_tokens: int = 1_000_000, rewarm_steps: int = 2000,
                 enc_scale: float = 0.2, reservoir_tokens: int = 16384, reservoir_steps: int = 16, seed: int = 0):
        super().__init__()
        at = [float(a) for a in at]
        if not at or any(not 0.0 < a < 1.0 for a in at):
            raise ConfigError(f"resampler.at={at!r}: expected fractions of the run in (0, 1)")
        for key, v, lo in (("window_tokens", window_tokens, 1), ("rewarm_steps", rewarm_steps, 0),
                           ("reservoir_tokens", reservoir_tokens, 1), ("reservoir_steps", reservoir_steps, 1)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"resampler.{key}={v!r}: expected an integer >= {lo}")
        if not enc_scale > 0:
            raise ConfigError(f"resampler.enc_scale={enc_scale!r}: expected a number > 0")
        self.at, self.window_tokens, self.rewarm_steps = sorted(at), window_tokens, rewarm_steps
        self.enc_scale, self.seed = float(enc_scale), seed
        self.capacity, self.reservoir_steps = reservoir_tokens, reservoir_steps
        # recent inputs: each step writes capacity / reservoir_steps of its (already shuffled) rows
        self.register_buffer("reservoir_ND", torch.zeros(0, 0))
        # schedule state as plain Python (no device sync per step); saved through get/set_extra_state
        self.done = [False] * len(self.at)
        self.last_step = -1  # step of the last resample (-1: none yet)
        self.filled = self.pos = 0
        self.history: list[tuple[int, int]] = []  # (step, features resampled) of every resample so far
        self._warned = False

    # --- state ------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"done": list(self.done), "last_step": self.last_step, "filled": self.filled, "pos": self.pos,
                "history": [list(h) for h in self.history]}

    def set_extra_state(self, state: dict) -> None:
        self.done, self.last_step = list(state["done"]), int(state["last_step"])
        self.filled, self.pos = int(state["filled"]), int(state["pos"])
        self.history = [tuple(h) for h in state.get("history", [])]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "reservoir_ND"
        if key in state_dict:  # the buffer's shape is known only once filled
            self.reservoir_ND = torch.empty_like(state_dict[key], device=self.reservoir_ND.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def validate(self, sae) -> None:
        """Raise ConfigError when `sae` lacks the parameters a resample rewrites (checked before training)."""
        if sae.revives_dead:  # allowed (an ablation), but it duplicates what the SAE does itself
            print(f"saeexp: warning: resampler=anthropic on {type(sae).__name__}, which already revives its dead "
                  "latents (AuxK: model.auxk); resampling as well, as asked", file=sys.stderr)
        for name, dim in (("W_dec", 0), *sae.encoder_rows):
            p = getattr(sae, name, None)
            if not isinstance(p, Tensor) or p.ndim <= dim or p.shape[dim] != sae.d_sae:
                raise ConfigError(f"resampler=anthropic on {type(sae).__name__}: no parameter {name!r} with "
                                  f"features along dim {dim}; list the encoder's as `encoder_rows` on the class")

    # --- the calls its Lightning callback makes (saeexp.resample.callback.Resampling) ---------------
    def points(self, total_steps: int) -> list[int]:
        """Steps (counted as optimiser steps done) at which to resample."""
        return [max(1, round(a * total_steps)) for a in self.at]

    @torch.no_grad()
    def observe(self, module, x_BD: Tensor, step: int) -> None:
        """Keep a bounded ring of recent inputs (the candidates for new directions)."""
        if not self._warned:
            self._warned = True
            batch = x_BD.shape[0]
            last_point = self.points(module.total_steps)[-1]
            if last_point * batch < self.window_tokens:
                warnings.warn(f"resampler.window_tokens={self.window_tokens} exceeds the tokens seen by the last "
                              f"resample point ({last_point * batch}): no feature can count as dead there, "
                              "so nothing will be resampled", stacklevel=2)
            left = module.total_steps - last_point
            if self.rewarm_steps > left:
                warnings.warn(f"resampler.rewarm_steps={self.rewarm_steps} exceeds the {left} steps after the last "
                              "resample point: the LR stays below its schedule to the end of the run if that point "
                              "resamples", stacklevel=2)
        if all(self.done):
            return  # no resample point left: no more copies
        if self.reservoir_ND.shape != (self.capacity, x_BD.shape[1]):
            self.reservoir_ND = x_BD.new_zeros(self.capacity, x_BD.shape[1], dtype=torch.float32)
            self.filled = self.pos = 0
        r = min(x_BD.shape[0], max(1, math.ceil(self.capacity / self.reservoir_steps)), self.capacity)
        end = self.pos + r
        if end <= self.capacity:
            self.reservoir_ND[self.pos:end] = x_BD[:r]
        else:  # wrap around
            k = self.capacity - self.pos
            self.reservoir_ND[self.pos:] = x_BD[:k]
            self.reservoir_ND[:r - k] = x_BD[k:r]
        self.pos = end % self.capacity
        self.filled = min(self.capacity, self.filled + r)

    def maybe_resample(self, module, step: int) -> int:
        """After optimiser step `step` (0-based): resample if a scheduled point is reached; returns how many."""
        done_steps = step + 1
        due = [i for i, p in enumerate(self.points(module.total_steps)) if not self.done[i] and done_steps >= p]
        if not due:
            return 0
        for i in due:
            self.done[i] = True
        sae = module.sae
        dead = sae.dead_mask(self.window_tokens).nonzero().squeeze(1)
        if dead.numel() == 0 or self.filled == 0:
            return 0
        opt = module.optimizers()
        opt = getattr(opt, "optimizer", opt)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        resample_features(sae, dead, self.reservoir_ND[:self.filled], opt, self.enc_scale, gen)
        self.last_step = step
        self.history.append((step, int(dead.numel())))
        rank_zero_info(f"saeexp: resampled {dead.numel()} dead features after step {step + 1}")
        return int(dead.numel())

    def lr_factor(self, step: int) -> float:
        """Linear LR re-warm from the last resample: step `last + 1` gets 1 / rewarm_steps, then up to 1."""
        if self.last_step < 0 or self.rewarm_steps <= 0 or step <= self.last_step:
            return 1.0
        return min(1.0, (step - self.last_step) / self.rewarm_steps)
