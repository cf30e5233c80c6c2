"""L1 sparsity penalties on feature activations (activations are >= 0, so |f| = f)."""
from torch import Tensor

from saeexp.losses.base import LossTerm


class L1(LossTerm):
    """lambda * mean over tokens of sum_i f_i, with a unit-norm decoder. `l1` is lambda (`loss.l1`)."""

    name = "l1"
    coefficient_key = "l1"
    is_sparsity = True
    decoder_norms = ("unit",)
    why_decoder = ": with free decoder norms this penalty is beaten by shrinking f and growing W_dec; " \
                  "loss=l1_decoder_norm weighs f by the norms"

    def __init__(self, l1: float):
        super().__init__(l1)

    def forward(self, x_BD: Tensor, out, sae) -> Tensor:
        # sum of all activations / tokens: no batch x width temporary beyond what autograd needs
        acts_BF = sae.sparsity_acts(out)
        return self.coef * acts_BF.sum() / acts_BF.shape[0]


class L1DecoderNorm(L1):
    """lambda * sum_i f_i * ||W_dec_i|| (Anthropic, April 2024 update); the decoder norm stays free."""

    name = "l1_decoder_norm"
    decoder_norms = ("free",)
    why_decoder = ": the decoder-norm-weighted penalty replaces the unit-norm constraint"

    def forward(self, x_BD: Tensor, out, sae) -> Tensor:
        # acts >= 0, so the weighted L1 is a matrix-vector product (no [B, F] product tensor)
        return self.coef * (sae.sparsity_acts(out) @ sae.penalty_decoder_norms()).mean()
