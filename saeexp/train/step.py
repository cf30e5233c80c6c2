"""The training step, one copy: every path (the LightningModule, `manual_step`, fine-tuning, benches, tests) runs it.

A step is `step_losses` (input scaling, the forward pass, each named loss term with the sparsity warm-up and
the target-L0 scale, firing bookkeeping), then backward, `before_optimizer_step` (the SAE's hook, then
gradient clipping), the optimiser step and `after_optimizer_step` (the SAE's hook). SAEModule lets Lightning
run backward and the optimiser between them; `manual_step` runs them itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeexp.train.target_l0 import TargetL0


def make_optimizer(optimizer_factory, sae):
    """The optimiser over `sae.param_groups()`, each group's lr multiplied by its `lr_scale` (default 1)."""
    opt = optimizer_factory(params=sae.param_groups())
    for group in opt.param_groups:  # a variant's own learning rates, relative to the configured one
        group["lr"] *= group.get("lr_scale", 1.0)
    return opt


def linear_ramp(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


@dataclass
class Recipe:
    """What a step does around the SAE and its loss terms (the train.* keys, in steps). Defaults: nothing."""

    input_scale: float = 1.0          # raw batch -> the space the SAE trains in (E||x|| = sqrt(d_in))
    sparsity_warmup_steps: int = 0    # sparsity terms ramp linearly from 0 over these steps
    grad_clip: float | None = None    # max gradient norm on the loss summed over d_in (clip_grad)
    target_l0: TargetL0 | None = None  # scales the sparsity terms, observes L0

    def sparsity_factor(self, step: int):
        warm = linear_ramp(step, self.sparsity_warmup_steps)
        return warm * self.target_l0.scale() if self.target_l0 is not None else warm


def step_losses(sae, terms, batch_BD: Tensor, step: int, recipe: Recipe):
    """Input scaling, forward, the named loss terms (sparsity ones scaled by the recipe), firing bookkeeping.

    Returns (x_BD scaled, the SAE's output, {term name: value}); the loss is the sum of the values.
    """
    x_BD = batch_BD * recipe.input_scale if recipe.input_scale != 1.0 else batch_BD
    out = sae(x_BD)
    factor = recipe.sparsity_factor(step)
    values = {}
    for t in terms:
        v = t(x_BD, out, sae)
        values[t.name] = v * factor if t.is_sparsity else v
    values.update(out.aux_losses)
    if recipe.target_l0 is not None:
        recipe.target_l0.observe(out.acts_BF, step)
    sae.update_firing(out.fired_F(), x_BD.shape[0])
    return x_BD, out, values


def clip_grad(sae, max_norm: float | None) -> None:
    """Scale the SAE's gradient down to norm `max_norm / d_in` when it is longer (no-op for None).

    The limit is stated on the loss summed over d_in (SAELens' scale, where it clips at 1), which is d_in times
    saeexp's mean over d_in. Why clip: Adam's second moment (beta2 0.999) averages g^2 over ~1000 steps, about a
    whole short run, so the large gradients of the first hundred steps keep every later step small; clipped,
    every step's gradient has the same norm and the step size stops depending on the start (the runs that show
    it: docs/training-quality.md, "Gradient clipping"). It costs one pass over the gradients.
    """
    if max_norm is None:
        return
    # (torch chooses its foreach kernels itself: on CUDA tensors only)
    torch.nn.utils.clip_grad_norm_([p for p in sae.parameters() if p.grad is not None], max_norm / sae.d_in)


def before_optimizer_step(sae, recipe: Recipe) -> None:
    """After backward: the SAE's hook (unit-norm decoder: radial gradient removed), then gradient clipping."""
    sae.before_optimizer_step()
    clip_grad(sae, recipe.grad_clip)


def after_optimizer_step(sae) -> None:
    """Right after the optimiser step: the SAE's hook (unit-norm decoder: rows renormalised)."""
    sae.after_optimizer_step()


def manual_step(sae, terms, optimizer, batch_BD: Tensor, step: int = 0, recipe: Recipe | None = None):
    """One whole step without Lightning (notebooks, fine-tuning, benches, tests): what SAEModule does per batch.

    `terms` are `LossTerm`s, the reconstruction included (`MSE()`); `step` drives the recipe's warm-up.
    Returns (output, {term name: value}).
    """
    recipe = recipe or Recipe()
    _, out, values = step_losses(sae, terms, batch_BD, step, recipe)
    loss = sum(values.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    before_optimizer_step(sae, recipe)
    optimizer.step()
    after_optimizer_step(sae)
    return out, values
