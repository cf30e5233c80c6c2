"""Initialisation from data: the input scale and the decoder bias."""
from __future__ import annotations

import torch
from torch import Tensor

from saeexp.errors import ConfigError

B_DEC_INITS = ("geometric_median", "mean", "zeros")


def input_scale(sample_ND: Tensor) -> float:
    """The factor s with E||s x|| = sqrt(d_in) (Anthropic-style normalisation), estimated from a sample."""
    mean_norm = sample_ND.norm(dim=1).mean().item()
    if not mean_norm > 0:
        raise ConfigError("cannot estimate the input scale: the sampled activations are all zero")
    return sample_ND.shape[1] ** 0.5 / mean_norm


@torch.no_grad()
def geometric_median(x_ND: Tensor, iters: int = 100, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the sample."""
    y = x_ND.mean(0)
    for _ in range(iters):
        w = 1.0 / (x_ND - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * x_ND).sum(0) / w.sum()
        if (y_new - y).norm() <= eps * y.norm().clamp_min(1.0):
            return y_new
        y = y_new
    return y


def b_dec_init(kind: str, x_ND: Tensor) -> Tensor:
    if kind == "geometric_median":
        return geometric_median(x_ND)
    if kind == "mean":
        return x_ND.mean(0)
    if kind == "zeros":
        return torch.zeros(x_ND.shape[1])
    raise ConfigError(f"train.b_dec_init={kind!r}: expected one of {B_DEC_INITS}")


@torch.no_grad()
def fit_encoder_scale(sae, x_ND: Tensor, rounds: int = 2) -> float:
    """Shrink the encoder weights by the c that minimises the initial reconstruction error on a sample.

    With b_enc = 0 the reconstruction minus b_dec, r(c), is linear in c for ReLU, gated, TopK and BatchTopK SAEs
    (nearly so for JumpReLU's small threshold), so c = <x - b_dec, r> / <r, r> (least squares), refitted
    `rounds` times. Why: with W_enc = W_dec^T and unit decoder rows, about half the latents fire at step 0 and
    r is about d_sae / (2 d_in) times x; the first gradients are then hundreds of times their later size, and
    Adam's second moment (beta2 0.999) remembers them for thousands of steps, so the decoder hardly moves after.
    Only a reconstruction too large is harmful: c is capped at 1, so an init that starts small on purpose (the
    0.1-norm free decoder of the April 2024 update) is left alone (growing it measured worse:
    docs/training-quality.md). Returns the factor.
    """
    total = 1.0
    was_training = sae.training
    sae.eval()
    for _ in range(rounds):
        target_ND = x_ND - sae.b_dec
        r_ND = sae(x_ND).x_hat_BD - sae.b_dec
        rr = (r_ND * r_ND).sum()
        if not rr > 0:
            break
        c = min(1.0, ((target_ND * r_ND).sum() / rr).item())
        if not 0 < c < 1:
            break
        for name in sae.encoder_weights:
            getattr(sae, name).mul_(c)
        total *= c
    sae.train(was_training)
    return total
