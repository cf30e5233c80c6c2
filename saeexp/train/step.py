"""One training step without Lightning, for notebooks, tests and benchmarks (SAEModule does the same via hooks)."""
from __future__ import annotations

import torch
from torch import Tensor


def make_optimizer(optimizer_factory, sae):
    """The optimiser over `sae.param_groups()`, each group's lr multiplied by its `lr_scale` (default 1)."""
    opt = optimizer_factory(params=sae.param_groups())
    for group in opt.param_groups:  # a variant's own learning rates, relative to the configured one
        group["lr"] *= group.get("lr_scale", 1.0)
    return opt


def clip_grad(sae, max_norm: float | None) -> None:
    """Scale the SAE's gradient down to norm `max_norm / d_in` when it is longer (no-op for None).

    The limit is stated on the loss summed over d_in (SAELens' scale, where it clips at 1), which is d_in times
    saeexp's mean over d_in. Why clip: Adam's second moment (beta2 0.999) averages g^2 over ~1000 steps, about a
    whole short run, so the large gradients of the first hundred steps (set 1: norm 7-17 on the summed scale,
    against 1.7 at the end) keep every later step small. Clipping at 1 holds every step's gradient at norm 1
    there, and the step size stops depending on what happened at the start. Measured on the quality bench's
    set 1 from SAELens' initial weights on the same batches (`$(scripts/saelens-venv.sh)
    bench/lockstep_saelens.py --arch jumprelu --coef 1 [--clip none]`): no clip L0 15.7, recovered@0.9 0.54;
    clip 1: L0 6.3, recovered 0.96 (SAELens' own trainer, same run: L0 6.2, recovered 0.95); standard SAE at
    coefficient 5: L0 14.7, FVU 0.566, recovered 0.70 without, 10.8 / 0.538 / 0.83 with (SAELens 10.8 / 0.538).
    Clipping costs one pass over the gradients (`python bench/bench_core.py`, the `+clip` row).
    """
    if max_norm is None:
        return
    # (torch chooses its foreach kernels itself: on CUDA tensors only)
    torch.nn.utils.clip_grad_norm_([p for p in sae.parameters() if p.grad is not None], max_norm / sae.d_in)


def manual_step(sae, terms, optimizer, x_BD: Tensor, grad_clip: float | None = None):
    """Loss terms, backward, decoder-norm handling around the optimiser step, firing bookkeeping.

    Returns (output, {term name: weighted value}); `terms` are `LossTerm`s (include `MSE()` for the recon).
    """
    out = sae(x_BD)
    values = {t.name: t(x_BD, out, sae) for t in terms}
    values.update(out.aux_losses)
    loss = sum(values.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sae.unit_norm:
        sae.remove_parallel_grad()
    clip_grad(sae, grad_clip)
    optimizer.step()
    if sae.unit_norm:
        sae.normalize_decoder()
    sae.update_firing(out.acts_BF)
    return out, values
