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
