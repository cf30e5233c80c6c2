"""Run a model with an SAE's reconstruction in place of a hook's activations."""
from __future__ import annotations

import contextlib

import torch

from saeexp.lm.model import check_hook


def _reconstruct(sae, x_ND: torch.Tensor) -> torch.Tensor:
    out = sae(x_ND)
    return out if isinstance(out, torch.Tensor) else out.x_hat_BD


@contextlib.contextmanager
def splice(model, sae, hook: str, mask=None):
    """Inside the block, every forward pass of `model` (a transformer_lens TransformerBridge) sees
    `sae(x).x_hat` instead of the activations x at `hook`.

    `sae` is any callable on raw activations [N, d] returning an `SAEOutput` or a tensor (a saved SAE
    from `saeexp.load_sae` is one). `mask` picks the positions to replace: None for all, a bool tensor
    [T] (the same positions in every sequence) or [B, T]; other positions keep their activations.
    Windows from data=lm start with BOS, so `mask = arange(T) > 0` leaves BOS alone, as the eval does.

        with saeexp.splice(model, sae, "blocks.3.hook_resid_pre"):
            loss = model(tokens, return_type="loss")
    """
    check_hook(model, hook)

    def replace(act, hook):
        B, T, D = act.shape
        x_hat = _reconstruct(sae, act.reshape(B * T, D).to(torch.float32)).reshape(B, T, D).to(act.dtype)
        if mask is None:
            return x_hat
        m = mask.to(act.device, torch.bool)
        m = m.expand(B, T) if m.dim() == 1 else m
        return torch.where(m[:, :, None], x_hat, act)

    with model.hooks(fwd_hooks=[(hook, replace)]):
        yield model
