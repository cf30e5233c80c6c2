"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410): keep the k * B largest activations of the whole batch
(ReLU first), so k per token on average; at inference a global threshold makes it a JumpReLU.

The threshold theta is a running estimate of the smallest kept activation (exponential moving average over
training batches); it is a buffer, saved with the SAE, and used in eval mode.

Finding the (k * B)-th largest of B * F values exactly with a full top-k over the batch costs a large share of a
step on a CPU. Instead: a strided subsample gives a value surely below it, the few entries above that value
are selected, and the exact order statistic is taken among them (a full selection only if the guess failed).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from saeexp.sae.base import SAEOutput
from saeexp.sae.topk import SparseActs, TopKSAE

SAMPLE = 1 << 17  # subsample size for the first guess


def kth_largest(z_BF: Tensor, m: int) -> Tensor:
    """The m-th largest entry of a [B, F] tensor, exactly (0-d tensor)."""
    z_flat, n = z_BF.reshape(-1), z_BF.numel()
    if m >= n:
        return z_flat.min()
    # a stride coprime with the row length visits every column, not a few
    stride = max(1, n // SAMPLE)
    while math.gcd(stride, z_BF.shape[1]) != 1:
        stride += 1
    sample = z_flat[::stride]
    # rank in the sample whose value lies below the m-th largest of the whole with a wide margin
    m_s = m * sample.numel() / n
    r = min(sample.numel(), math.ceil(1.25 * m_s + 8 * math.sqrt(m_s) + 16))
    guess = sample.kthvalue(sample.numel() - r + 1).values
    cand = z_flat[z_flat >= guess]
    if cand.numel() < m:  # the guess was too high: select among all
        cand = z_flat
    return cand.kthvalue(cand.numel() - m + 1).values


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE. Parameters as the standard SAE: W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]; buffer
    `threshold` (0-d, fp32; -1 until the first training batch). AuxK as in `TopKSAE`.
    """

    threshold: Tensor

    def __init__(self, d_in: int, d_sae: int, k: int = 32, threshold_momentum: float = 0.99, **kw):
        super().__init__(d_in, d_sae, k=k, **kw)
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def _cut(self, pre_BF: Tensor) -> float:
        """Keep z > cut: the (k * B)-th largest z (in training; its next float down in z's dtype, so that it is
        kept), or the estimated threshold (eval). Fewer than k * B positive values: cut 0, a ReLU."""
        if self.training or self.threshold < 0:
            t = kth_largest(pre_BF.detach(), self.k * pre_BF.shape[0])
            if self.training:
                self._update_threshold(t)
            return float(torch.nextafter(t, t.new_tensor(-math.inf))) if t > 0 else 0.0
        return float(self.threshold)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return F.threshold(pre_BF, self._cut(pre_BF), 0.0)  # z where z > cut, else 0

    def _select(self, z_BF: Tensor) -> SparseActs:
        b_N, f_N = (z_BF > self._cut(z_BF)).nonzero(as_tuple=True)  # token-major, as the decoder needs
        return SparseActs(b_N, f_N, z_BF[b_N, f_N], (z_BF.shape[0], z_BF.shape[1]))

    @torch.no_grad()
    def _update_threshold(self, t: Tensor) -> None:
        t = t.clamp_min(0).to(self.threshold)
        first = self.threshold < 0
        self.threshold.copy_(torch.where(first, t, torch.lerp(t, self.threshold, self.threshold_momentum)))

    def forward(self, x_BD: Tensor) -> SAEOutput:
        if self.training:  # sparse, as TopK: about k * B active entries
            return super().forward(x_BD)
        pre_BF = self.encode_pre(x_BD)
        acts_BF = self.activation(pre_BF)
        return SAEOutput(self.decode(acts_BF), acts_BF, pre_BF)
