"""One training step without Lightning, for notebooks, tests and benchmarks (SAEModule does the same via hooks)."""
from __future__ import annotations

from torch import Tensor


def make_optimizer(optimizer_factory, sae):
    """The optimiser over `sae.param_groups()`, each group's lr multiplied by its `lr_scale` (default 1)."""
    opt = optimizer_factory(params=sae.param_groups())
    for group in opt.param_groups:  # a variant's own learning rates, relative to the configured one
        group["lr"] *= group.get("lr_scale", 1.0)
    return opt


def manual_step(sae, terms, optimizer, x_BD: Tensor):
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
    optimizer.step()
    if sae.unit_norm:
        sae.normalize_decoder()
    sae.update_firing(out.acts_BF)
    return out, values
