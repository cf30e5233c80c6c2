"""SCSAE (reference 000): the encoder bias only inhibits. Feature i outputs z_i - b_enc_i = (x - b_dec) . w_e_i
when z_i = (x - b_dec) . w_e_i + b_enc_i > 0, else 0: the bias decides whether it fires but is not added.

Forward alone gives b_enc no gradient, so backward is the standard SAE's: the local vector-Jacobian product of
ReLU(z), which teaches b_enc through the units that fired (as relu(z) - (b_enc * (z > 0)).detach() would).
"""
from __future__ import annotations

import torch
from torch import Tensor

from saeexp.sae.base import SAE


class _InhibitOnly(torch.autograd.Function):
    """f = 1[z > 0] * (z - b); backward as ReLU(z): dz = g * 1[z > 0], db = 0 (b reaches its gradient via z)."""

    @staticmethod
    def forward(ctx, z_BF: Tensor, b_F: Tensor):
        ctx.save_for_backward(z_BF)
        f_BF = torch.sub(z_BF, b_F)
        # keep z - b where z > 0, in place: one same-dtype pass (a bool-mask select is slower on a CPU)
        return torch.ops.aten.threshold_backward.grad_input(f_BF, z_BF, 0.0, grad_input=f_BF)

    @staticmethod
    def backward(ctx, g_BF: Tensor):
        (z_BF,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g_BF, z_BF, 0.0), None


class SCSAE(SAE):
    """Scale-consistent SAE (bias as inhibition only). Parameters as the standard SAE: W_enc [D, F], b_enc [F],
    W_dec [F, D], b_dec [D]. `out.pre_BF` is z (bias included); its sign decides firing.

    Reference 000's second variant (bias gradient as if multiplied by the output) is not implemented: its
    author reports degenerate late-training behaviour with it.
    """

    def activation(self, pre_BF: Tensor) -> Tensor:
        # b_enc enters as a constant here; its gradient flows through pre_BF = ... + b_enc, as in ReLU(z)
        return _InhibitOnly.apply(pre_BF, self.b_enc.detach())
