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
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.sae.base import SAE, SAEOutput
from saeexp.util import ranks


def _scatter_rows(f_N: Tensor, b_N: Tensor, w_N: Tensor, rows_BD: Tensor, n_rows: int) -> Tensor:
    """G [n_rows, D] with G[f_n] += w_n * rows[b_n]: a sparse [n_rows, B] matrix times rows.

    (The weight gradient of the sparse decode or encode; as an unsorted COO product it is faster on a CPU
    than embedding_bag's own backward, which sorts the indices first.)
    """
    A = torch.sparse_coo_tensor(torch.stack([f_N, b_N]), w_N, (n_rows, rows_BD.shape[0]), check_invariants=False)
    return torch.sparse.mm(A, rows_BD)


class SparseActs:
    """Active entries of a [B, F] activation matrix, token-major: token b_N[n], feature f_N[n], value vals_N[n]."""

    def __init__(self, b_N: Tensor, f_N: Tensor, vals_N: Tensor, shape: tuple[int, int]):
        self.b_N, self.f_N, self.vals_N, self.shape = b_N, f_N, vals_N, shape
        counts_B = torch.bincount(b_N, minlength=shape[0])
        self.offsets_B = counts_B.cumsum(0) - counts_B  # where each token's entries start

    @classmethod
    def from_topk(cls, vals_BK: Tensor, idx_BK: Tensor, n_features: int) -> SparseActs:
        B, K = idx_BK.shape
        b_N = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
        return cls(b_N, idx_BK.reshape(-1), vals_BK.reshape(-1), (B, n_features))

    def dense(self) -> Tensor:
        return torch.zeros(self.shape, dtype=self.vals_N.dtype, device=self.vals_N.device).index_put_(
            (self.b_N, self.f_N), self.vals_N.detach())


class _SparseEncode(torch.autograd.Function):
    """ReLU of pre-activations picked at (b_N, f_N) of z = x @ W_enc + b; gradient only through those entries.

    z itself is computed without autograd (the selection needs all of it, the gradient only the picks), so
    the backward is a sparse product for W_enc and a scatter for b, instead of dense [B, F] products.
    """

    @staticmethod
    def forward(ctx, x_BD: Tensor, W_enc_DF: Tensor, b_F: Tensor, picked_N: Tensor, b_N: Tensor, f_N: Tensor):
        ctx.set_materialize_grads(False)
        vals_N = picked_N.relu()
        ctx.save_for_backward(x_BD, W_enc_DF, vals_N, b_N, f_N)
        return vals_N

    @staticmethod
    def backward(ctx, g_N: Tensor):
        if g_N is None:
            return (None,) * 6
        x_BD, W_enc_DF, vals_N, b_N, f_N = ctx.saved_tensors
        g_N = g_N * (vals_N > 0)
        F_ = W_enc_DF.shape[1]
        g_x = g_W = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = torch.zeros_like(x_BD).index_add_(0, b_N, g_N[:, None] * W_enc_DF.t()[f_N])
        if ctx.needs_input_grad[1]:
            g_W = _scatter_rows(f_N, b_N, g_N, x_BD, F_).t()
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(F_, dtype=g_N.dtype, device=g_N.device).index_add_(0, f_N, g_N)
        return g_x, g_W, g_b, None, None, None


class _SparseDecode(torch.autograd.Function):
    """y[b] = sum over token b's entries of vals_n * W[f_n] (an embedding bag), with a sparse backward for W."""

    @staticmethod
    def forward(ctx, vals_N: Tensor, f_N: Tensor, b_N: Tensor, offsets_B: Tensor, W_FD: Tensor):
        ctx.set_materialize_grads(False)
        # under autocast (bf16-mixed) the encoder hands bf16 values to fp32 weights; embedding_bag takes one
        # dtype, so the bag sums in the weights' (autograd casts the values' gradient back); a no-op otherwise
        vals_N = vals_N.to(W_FD.dtype)
        y_BD = torch.ops.aten._embedding_bag(W_FD, f_N, offsets_B, False, 0, False, vals_N)[0]
        ctx.save_for_backward(vals_N, f_N, b_N, offsets_B, W_FD)
        return y_BD

    @staticmethod
    def backward(ctx, g_BD: Tensor):
        if g_BD is None:
            return (None,) * 5
        vals_N, f_N, b_N, offsets_B, W_FD = ctx.saved_tensors
        g_vals = g_W = None
        g_BD = g_BD.contiguous()
        if ctx.needs_input_grad[0]:  # g_vals[n] = g[b_n] . W[f_n]  (b_N is what embedding_bag calls offset2bag)
            g_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(g_BD, W_FD, f_N, offsets_B, b_N, 0)
        if ctx.needs_input_grad[4]:
            g_W = _scatter_rows(f_N, b_N, vals_N, g_BD, W_FD.shape[0])
        return g_vals, None, None, None, g_W


class _SparseActsOutput(SAEOutput):
    """SAEOutput whose dense acts_BF is built from the active entries only when someone reads it."""

    def __init__(self, x_hat_BD, sparse: SparseActs, pre_BF, aux_losses=None, extras=None):
        self._dense: Tensor | None = None
        self.sparse = sparse
        super().__init__(x_hat_BD, None, pre_BF, aux_losses or {}, extras or {})  # type: ignore[arg-type]

    @property
    def acts_BF(self) -> Tensor:
        if self._dense is None:
            self._dense = self.sparse.dense()
        return self._dense

    @acts_BF.setter
    def acts_BF(self, value) -> None:
        self._dense = value

    def fired_F(self) -> Tensor:
        """From the active entries: no dense [B, F] tensor (only log steps build one, for their metrics)."""
        sp = self.sparse
        fired = torch.zeros(sp.shape[1], dtype=torch.bool, device=sp.f_N.device)
        return fired.index_fill_(0, sp.f_N[sp.vals_N.detach() > 0], True)


class TopKSAE(SAE):
    """TopK SAE. Parameters as the standard SAE: W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D].

    `out.acts_BF` is dense (built on first read, detached: no penalty applies); `out.sparse` (`SparseActs`)
    holds the kept entries. `out.aux_losses["auxk"]` is AuxK (training mode only).
    """

    sparsity = "structure"   # the k largest: L1/L0 are refused
    aux_terms = ("auxk",)
    sparsity_control = "k"   # model.k (BatchTopK: k per token on average)

    def __init__(self, d_in: int, d_sae: int, k: int = 32, decoder_norm: str = "unit",
                 init_dec_norm: float | None = None, enc_from_dec: bool = True, seed: int = 0, auxk: float = 1 / 32,
                 k_aux: int | None = None, dead_window_tokens: int | None = 10_000_000,
                 dead_window_batches: int | None = None):
        super().__init__(d_in, d_sae, decoder_norm, init_dec_norm, enc_from_dec, seed)
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ConfigError(f"model.k={k!r}: expected an integer in [1, d_sae={d_sae}]")
        k_aux = d_in // 2 if k_aux is None else k_aux
        if not isinstance(k_aux, int) or k_aux < 1:
            raise ConfigError(f"model.k_aux={k_aux!r}: expected an integer >= 1")
        if not auxk >= 0:
            raise ConfigError(f"model.auxk={auxk!r}: expected a number >= 0")
        # AuxK's dead window, in tokens or in batches (BatchTopK's authors count batches): exactly one is set
        if (dead_window_tokens is None) == (dead_window_batches is None):
            raise ConfigError(f"model.dead_window_tokens={dead_window_tokens!r}, model.dead_window_batches="
                              f"{dead_window_batches!r}: expected exactly one of them set (the other null)")
        for key, v in (("dead_window_tokens", dead_window_tokens), ("dead_window_batches", dead_window_batches)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"model.{key}={v!r}: expected an integer >= 1 (or null)")
        self.k, self.k_aux, self.auxk = k, k_aux, float(auxk)
        self.dead_window_tokens, self.dead_window_batches = dead_window_tokens, dead_window_batches

    def _b_eff(self) -> Tensor:
        return self.b_enc - self.b_dec @ self.W_enc  # (x - b_dec) W + b = x W + (b - b_dec W)

    def sparse_encode(self, x_BD: Tensor, W_DF: Tensor, b_F: Tensor, select) -> tuple[SparseActs, Tensor]:
        """Pre-activations z = x W + b (no autograd), `select(z)` -> SparseActs of picks, which get the gradient."""
        with torch.no_grad():
            z_BF = torch.addmm(b_F, x_BD, W_DF)
        sp = select(z_BF)
        sp.vals_N = _SparseEncode.apply(x_BD, W_DF, b_F, sp.vals_N, sp.b_N, sp.f_N)
        return sp, z_BF

    def sparse_decode(self, sp: SparseActs, f_N: Tensor | None = None, bias: bool = True) -> Tensor:
        """Decoder on the active entries only (features f_N, default sp.f_N), + b_dec."""
        y_BD = _SparseDecode.apply(sp.vals_N, sp.f_N if f_N is None else f_N, sp.b_N, sp.offsets_B, self.W_dec)
        return y_BD + self.b_dec if bias else y_BD

    def _select(self, z_BF: Tensor) -> SparseActs:
        vals_BK, idx_BK = z_BF.topk(self.k, dim=1, sorted=False)
        return SparseActs.from_topk(vals_BK, idx_BK, z_BF.shape[1])

    def activation(self, pre_BF: Tensor) -> Tensor:
        vals_BK, idx_BK = pre_BF.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre_BF).scatter_(1, idx_BK, vals_BK.relu())

    def forward(self, x_BD: Tensor) -> SAEOutput:
        sp, pre_BF = self.sparse_encode(x_BD, self.W_enc, self._b_eff(), self._select)
        x_hat_BD = self.sparse_decode(sp)
        out = _SparseActsOutput(x_hat_BD, sp, pre_BF)
        if self.training and self.auxk > 0:
            out.aux_losses["auxk"] = self.auxk * self.auxk_loss(x_BD, x_hat_BD)
        return out

    @property
    def revives_dead(self) -> bool:
        return self.auxk > 0

    def auxk_loss(self, x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
        """Normalised error of reconstructing the residual from the k_aux largest dead pre-activations."""
        # a window in batches counts global batches (data-parallel: every rank's shard of one)
        window = self.dead_window_tokens or int(self.dead_window_batches or 0) * x_BD.shape[0] * ranks.world()
        dead_N = self.dead_mask(window).nonzero().squeeze(1)
        if dead_N.numel() == 0:
            return torch.zeros((), dtype=x_BD.dtype, device=x_BD.device)
        e_BD = (x_BD - x_hat_BD).detach()
        k_aux = min(self.k_aux, dead_N.numel())
        W_DN, b_N = self.column_encoder(dead_N)  # the dead columns' pre-activations, with gradient
        if 8 * k_aux < dead_N.numel():  # few kept per token: sparse, as the main path
            def select(z_BN):
                vals_BK, j_BK = z_BN.topk(k_aux, dim=1, sorted=False)
                return SparseActs.from_topk(vals_BK, j_BK, z_BN.shape[1])

            sp, _ = self.sparse_encode(x_BD, W_DN, b_N, select)
            e_hat_BD = self.sparse_decode(sp, f_N=dead_N[sp.f_N], bias=False)
        else:  # a large share of few columns: small dense products are cheaper than gathers
            z_BN = torch.addmm(b_N, x_BD, W_DN)
            vals_BK, j_BK = z_BN.topk(k_aux, dim=1, sorted=False)
            acts_BN = torch.zeros_like(z_BN).scatter(1, j_BK, vals_BK.relu())
            e_hat_BD = acts_BN @ self.W_dec.index_select(0, dead_N)
        # a ratio over the whole (global) batch: under data parallelism the denominator is summed over ranks and
        # each rank's numerator weighted by the world size, so DDP's mean of the ranks' gradients is the
        # gradient of the global ratio (e has no gradient: the sum needs none)
        den = ranks.all_sum(e_BD.pow(2).sum()).clamp_min(1e-12)
        return (e_hat_BD - e_BD).pow(2).sum() * ranks.world() / den
