"""TopK SAE (Gao et al. 2024, arXiv 2406.04093): keep the k largest pre-activations of each token, then ReLU.

Sparsity is structural (no penalty: `loss=none`). Dead latents are revived by AuxK: the residual
e = x - x_hat (no gradient) is reconstructed, without b_dec, from the k_aux largest pre-activations among dead
latents; the term is auxk * ||e - e_hat||^2 / ||e||^2 over the batch (Gao et al. use a normalised MSE, which
makes the 1/32 coefficient independent of the residual's size), and zero when no latent is dead.

Speed: only k of F activations are non-zero, so the decoder works on them alone (gathering k decoder rows
per token: `embedding_bag`), and the encoder's backward scatters k columns per token instead of a dense
product. Of the standard step's six products only the forward encoder product is left dense.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.sae.base import SAE, SAEOutput


def _scatter_rows(idx_BK: Tensor, w_BK: Tensor, rows_BD: Tensor, n_rows: int) -> Tensor:
    """G [n_rows, D] with G[idx[b, j]] += w[b, j] * rows[b]: a sparse [n_rows, B] matrix times rows.

    (A weight gradient of the sparse decode or encode; as an unsorted COO product it is about twice as fast
    on a CPU as embedding_bag's own backward, which sorts the indices first.)
    """
    B, K = idx_BK.shape
    b_N = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    A = torch.sparse_coo_tensor(torch.stack([idx_BK.reshape(-1), b_N]), w_BK.reshape(-1), (n_rows, B),
                                check_invariants=False)
    return torch.sparse.mm(A, rows_BD)


class _SparseDecode(torch.autograd.Function):
    """y[b] = sum_j vals[b, j] * W[idx[b, j]] (an embedding bag), with the sparse backward above for W."""

    @staticmethod
    def forward(ctx, vals_BK: Tensor, idx_BK: Tensor, W_FD: Tensor):
        ctx.set_materialize_grads(False)  # unused outputs: None, not [B, F] zeros
        B, K = idx_BK.shape
        idx_N, offsets_B = idx_BK.reshape(-1), torch.arange(0, B * K, K, device=idx_BK.device)
        y_BD, offset2bag, _, _ = torch.ops.aten._embedding_bag(W_FD, idx_N, offsets_B, False, 0, False,
                                                               vals_BK.reshape(-1))
        ctx.save_for_backward(vals_BK, idx_BK, W_FD, offsets_B, offset2bag)
        return y_BD

    @staticmethod
    def backward(ctx, g_BD: Tensor):
        vals_BK, idx_BK, W_FD, offsets_B, offset2bag = ctx.saved_tensors
        g_vals = g_W = None
        g_BD = g_BD.contiguous()
        if ctx.needs_input_grad[0]:  # g_vals[b, j] = g[b] . W[idx[b, j]]
            g_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                g_BD, W_FD, idx_BK.reshape(-1), offsets_B, offset2bag, 0).view_as(vals_BK)
        if ctx.needs_input_grad[2]:
            g_W = _scatter_rows(idx_BK, vals_BK, g_BD, W_FD.shape[0])
        return g_vals, None, g_W


class _TopKEncode(torch.autograd.Function):
    """z = x @ W_enc + b (dense), then the k largest per row, ReLU'd; backward only through the kept entries."""

    @staticmethod
    def forward(ctx, x_BD: Tensor, W_enc_DF: Tensor, b_F: Tensor, k: int):
        ctx.set_materialize_grads(False)  # unused outputs: None, not [B, F] zeros
        z_BF = torch.addmm(b_F, x_BD, W_enc_DF)
        vals_BK, idx_BK = z_BF.topk(k, dim=1, sorted=False)
        vals_BK.relu_()
        ctx.save_for_backward(x_BD, W_enc_DF, vals_BK, idx_BK)
        ctx.mark_non_differentiable(idx_BK, z_BF)
        return vals_BK, idx_BK, z_BF

    @staticmethod
    def backward(ctx, g_vals_BK: Tensor, _g_idx, _g_z):
        if g_vals_BK is None:
            return None, None, None, None
        x_BD, W_enc_DF, vals_BK, idx_BK = ctx.saved_tensors
        g_BK = g_vals_BK * (vals_BK > 0)
        F_ = W_enc_DF.shape[1]
        g_x = g_W = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(idx_BK, W_enc_DF.t().contiguous(), per_sample_weights=g_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            g_W = _scatter_rows(idx_BK, g_BK, x_BD, F_).t()
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(F_, dtype=g_BK.dtype, device=g_BK.device).index_add_(0, idx_BK.reshape(-1),
                                                                                  g_BK.reshape(-1))
        return g_x, g_W, g_b, None


class _SparseActsOutput(SAEOutput):
    """SAEOutput whose dense acts_BF is built from the kept (index, value) pairs only when someone reads it."""

    def __init__(self, x_hat_BD, idx_BK, vals_BK, pre_BF, aux_losses=None, extras=None):
        self._dense, self._idx, self._vals = None, idx_BK, vals_BK
        super().__init__(x_hat_BD, None, pre_BF, aux_losses or {}, {**(extras or {}),
                                                                    "topk_idx_BK": idx_BK, "topk_vals_BK": vals_BK})

    @property
    def acts_BF(self) -> Tensor:
        if self._dense is None:
            self._dense = torch.zeros_like(self.pre_BF).scatter_(1, self._idx, self._vals.detach())
        return self._dense

    @acts_BF.setter
    def acts_BF(self, value) -> None:
        self._dense = value


class TopKSAE(SAE):
    """TopK SAE. Parameters as the standard SAE: W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D].

    `out.acts_BF` is dense (built on first read, detached: no penalty applies); `extras["topk_idx_BK"]`,
    `extras["topk_vals_BK"]` are the kept features. `out.aux_losses["auxk"]` is AuxK (training mode only).
    """

    accepts_penalty = False  # sparsity is structural: L1/L0 are refused
    needs_sparsity_penalty = False

    def __init__(self, d_in: int, d_sae: int, k: int = 32, decoder_norm: str = "unit", init_dec_norm: float = 1.0,
                 enc_from_dec: bool = True, seed: int = 0, auxk: float = 1 / 32, k_aux: int | None = None,
                 dead_window_tokens: int = 10_000_000):
        super().__init__(d_in, d_sae, decoder_norm, init_dec_norm, enc_from_dec, seed)
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ConfigError(f"model.k={k!r}: expected an integer in [1, d_sae={d_sae}]")
        k_aux = d_in // 2 if k_aux is None else k_aux
        if not isinstance(k_aux, int) or k_aux < 1:
            raise ConfigError(f"model.k_aux={k_aux!r}: expected an integer >= 1")
        if not auxk >= 0:
            raise ConfigError(f"model.auxk={auxk!r}: expected a number >= 0")
        self.k, self.k_aux, self.auxk, self.dead_window_tokens = k, k_aux, float(auxk), int(dead_window_tokens)

    def _b_eff(self) -> Tensor:
        return self.b_enc - self.b_dec @ self.W_enc  # (x - b_dec) W + b = x W + (b - b_dec W)

    def sparse_decode(self, idx_BK: Tensor, vals_BK: Tensor, bias: bool = True) -> Tensor:
        """sum_j vals[b, j] * W_dec[idx[b, j]] (+ b_dec): the decoder on the kept features only."""
        y_BD = _SparseDecode.apply(vals_BK, idx_BK, self.W_dec)
        return y_BD + self.b_dec if bias else y_BD

    def activation(self, pre_BF: Tensor) -> Tensor:
        vals_BK, idx_BK = pre_BF.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre_BF).scatter_(1, idx_BK, vals_BK.relu())

    def forward(self, x_BD: Tensor) -> SAEOutput:
        vals_BK, idx_BK, pre_BF = _TopKEncode.apply(x_BD, self.W_enc, self._b_eff(), self.k)
        x_hat_BD = self.sparse_decode(idx_BK, vals_BK)
        out = _SparseActsOutput(x_hat_BD, idx_BK, vals_BK, pre_BF)
        if self.training and self.auxk > 0:
            out.aux_losses["auxk"] = self.auxk * self.auxk_loss(x_BD, x_hat_BD)
        return out

    def auxk_loss(self, x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
        """Normalised error of reconstructing the residual from the k_aux largest dead pre-activations."""
        dead_N = self.dead_mask(self.dead_window_tokens).nonzero().squeeze(1)
        if dead_N.numel() == 0:
            return torch.zeros((), dtype=x_BD.dtype, device=x_BD.device)
        e_BD = (x_BD - x_hat_BD).detach()
        k_aux = min(self.k_aux, dead_N.numel())
        # the dead columns' pre-activations, recomputed with gradient (a product over n_dead columns only)
        W_DN = self.W_enc.index_select(1, dead_N)
        b_N = self.b_enc[dead_N] - self.b_dec @ W_DN
        if 8 * k_aux < dead_N.numel():  # few kept per token: sparse, as the main path
            vals_BK, j_BK, _ = _TopKEncode.apply(x_BD, W_DN, b_N, k_aux)
            e_hat_BD = self.sparse_decode(dead_N[j_BK], vals_BK, bias=False)
        else:  # a large share of few columns: small dense products are cheaper than gathers
            z_BN = torch.addmm(b_N, x_BD, W_DN)
            vals_BK, j_BK = z_BN.topk(k_aux, dim=1, sorted=False)
            acts_BN = torch.zeros_like(z_BN).scatter(1, j_BK, vals_BK.relu())
            e_hat_BD = acts_BN @ self.W_dec.index_select(0, dead_N)
        return (e_hat_BD - e_BD).pow(2).sum() / e_BD.pow(2).sum().clamp_min(1e-12)
