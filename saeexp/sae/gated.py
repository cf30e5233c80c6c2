"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014): a gate decides which features fire, a weight-shared
magnitude path decides how much.

    pi    = (x - b_dec) @ W_gate + b_gate                       f_gate = 1[pi > 0]
    f_mag = ReLU((x - b_dec) @ W_mag + b_mag),  W_mag = W_gate * exp(r_mag)  (per feature)
    f     = f_gate * f_mag
Loss: recon(f) + lambda * sparsity(ReLU(pi)) + aux_recon * recon of x from ReLU(pi) through the decoder, which
that term trains by default (as SAELens does) or not (the paper's stop-gradient decoder): `free_decoder`.
Since W_mag shares W_gate, both paths come from one product Q = (x - b_dec) @ W_gate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeexp.errors import ConfigError
from saeexp.sae.base import SAE, SAEOutput

# whether the decoder trains through the auxiliary term (and, with a decoder-norm-weighted penalty, through the
# penalty's norms): reference 002, frozen in both places or trained in both, never one without the other
FREE_DECODER = ("unfrozen_in_aux", "frozen_in_penalty")


# keep(a, cond, out): a where cond > 0, else 0, written into out; one same-dtype pass (on a CPU a bool-mask
# select runs at half the speed, and each fresh [B, F] float tensor costs several passes: count them)
_keep = torch.ops.aten.threshold_backward.grad_input


class _GatedAct(torch.autograd.Function):
    """From Q = (x - b_dec) @ W_gate: f = 1[pi > 0] * ReLU(exp(r) Q + b_mag), ReLU(pi) (twice) and pi.

    pi is written over Q (the matrix product's output, which its backward does not need). ReLU(pi) comes
    out twice, as the auxiliary decoder's input and as the penalty's: their gradients then arrive apart
    (the penalty's as a broadcast constant) and are summed in one pass here, not by autograd.
    The gate has no gradient through f (the Heaviside); it learns from ReLU(pi) (penalty, auxiliary loss).
    """

    @staticmethod
    def forward(ctx, Q_BF: Tensor, b_gate_F: Tensor, r_mag_F: Tensor, b_mag_F: Tensor):
        ctx.set_materialize_grads(False)  # unused outputs: None, not [B, F] zeros
        scale_F = r_mag_F.exp()
        pi_BF = Q_BF.add_(b_gate_F)
        ctx.mark_dirty(Q_BF)
        # exp(r) Q + b_mag = exp(r) pi + (b_mag - exp(r) b_gate)
        f_BF = torch.addcmul(b_mag_F - scale_F * b_gate_F, pi_BF, scale_F).relu_()
        f_BF = _keep(f_BF, pi_BF, 0.0, grad_input=f_BF)
        gate_BF = torch.relu(pi_BF)
        ctx.save_for_backward(pi_BF, b_gate_F, scale_F, f_BF, gate_BF)
        ctx.mark_non_differentiable(pi_BF)
        return f_BF, gate_BF, gate_BF.view_as(gate_BF), pi_BF

    @staticmethod
    def backward(ctx, g_f, g_gate, g_pen, _g_pi):
        pi_BF, b_gate_F, scale_F, f_BF, gate_BF = ctx.saved_tensors
        g_pi = g_b_gate = g_r = g_b_mag = None
        if g_gate is not None and g_pen is not None:
            g_pi = torch.add(g_gate, g_pen)
            g_pi = _keep(g_pi, gate_BF, 0.0, grad_input=g_pi)
        elif g_gate is not None or g_pen is not None:
            g_pi = torch.ops.aten.threshold_backward(g_gate if g_pen is None else g_pen, gate_BF, 0.0)
        if g_pi is not None:
            g_b_gate = g_pi.sum(0)
        if g_f is None:
            return g_pi, g_b_gate, None, None
        g_mag = torch.ops.aten.threshold_backward(g_f, f_BF, 0.0)
        g_b_mag = g_mag.sum(0)
        g_Q = g_mag * scale_F if g_pi is None else g_pi.addcmul_(g_mag, scale_F)
        # d f / d r = exp(r) Q = exp(r) (pi - b_gate) on active entries
        g_r = (g_mag.mul_(pi_BF).sum(0) - b_gate_F * g_b_mag) * scale_F
        return g_Q, g_b_gate, g_r, g_b_mag


class GatedSAE(SAE):
    """Gated SAE. Parameters: W_gate [D, F] (the shared encoder, in place of W_enc), b_gate [F], r_mag [F],
    b_mag [F], W_dec [F, D], b_dec [D].

    `out.acts_BF` is f, `out.pre_BF` the gate pre-activation pi, `extras["gate_acts_BF"]` ReLU(pi) (what
    an L1 penalty is on), `out.aux_losses["aux_recon"]` the auxiliary reconstruction.
    `free_decoder`: "unfrozen_in_aux" (default: the auxiliary term trains W_dec, and a decoder-norm-weighted
    penalty its norms, as SAELens does) or "frozen_in_penalty" (the auxiliary term never moves the decoder and
    the penalty's norms are detached: the paper's loss). Why unfrozen by default: frozen, only f trains W_dec,
    and at moderate sparsity the decoder settles on directions that are not the features; the auxiliary term,
    an L1 SAE on ReLU(pi), pulls it to them (docs/training-quality.md, "Gated").
    """

    encoder_weights = ("W_gate",)
    aux_terms = ("aux_recon",)
    encoder_rows = (("W_gate", 1), ("b_gate", 0), ("r_mag", 0), ("b_mag", 0))  # r_mag = 0: W_mag = W_gate
    has_encoder_bias = False  # two encoder biases (b_gate, b_mag): no single b_enc to fold b_dec into

    def __init__(self, d_in: int, d_sae: int, decoder_norm: str = "unit", init_dec_norm: float | None = None,
                 enc_from_dec: bool = True, seed: int = 0, aux_recon: float = 1.0,
                 free_decoder: str = "unfrozen_in_aux"):
        super().__init__(d_in, d_sae, decoder_norm, init_dec_norm, enc_from_dec, seed)
        if free_decoder not in FREE_DECODER:
            raise ConfigError(f"model.free_decoder={free_decoder!r}: expected one of {FREE_DECODER}")
        if not aux_recon >= 0:
            raise ConfigError(f"model.aux_recon={aux_recon!r}: expected a number >= 0")
        self.aux_recon, self.free_decoder = float(aux_recon), free_decoder
        W_gate, b_gate = self.W_enc.data, self.b_enc.data
        del self.W_enc, self.b_enc  # named as in the paper
        self.W_gate, self.b_gate = nn.Parameter(W_gate), nn.Parameter(b_gate)
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    def _shared_pre(self, x_BD: Tensor) -> Tensor:
        # Q = (x - b_dec) @ W_gate, with no product for the gradient of x (see SAE.encode_pre)
        return torch.addmm(-(self.b_dec @ self.W_gate), x_BD, self.W_gate)

    def _gated(self, x_BD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _GatedAct.apply(self._shared_pre(x_BD), self.b_gate, self.r_mag, self.b_mag)

    def encode_pre(self, x_BD: Tensor) -> Tensor:
        """Gate pre-activations pi (a feature fires when pi > 0)."""
        return self._shared_pre(x_BD) + self.b_gate

    def encode(self, x_BD: Tensor) -> Tensor:
        return self._gated(x_BD)[0]

    def forward(self, x_BD: Tensor) -> SAEOutput:
        f_BF, gate_BF, gate_pen_BF, pi_BF = self._gated(x_BD)
        out = SAEOutput(self.decode(f_BF), f_BF, pi_BF, extras={"gate_acts_BF": gate_pen_BF})
        if self.training and self.aux_recon > 0:
            unfrozen = self.free_decoder == "unfrozen_in_aux"
            W_dec = self.W_dec if unfrozen else self.W_dec.detach()
            b_dec = self.b_dec if unfrozen else self.b_dec.detach()
            out.aux_losses["aux_recon"] = self.aux_recon * F.mse_loss(torch.addmm(b_dec, gate_BF, W_dec), x_BD)
        return out

    def sparsity_acts(self, out: SAEOutput) -> Tensor:
        return out.extras["gate_acts_BF"]

    def penalty_decoder_norms(self) -> Tensor:
        norms_F = self.decoder_norms()
        return norms_F if self.free_decoder == "unfrozen_in_aux" else norms_F.detach()
