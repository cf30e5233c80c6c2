"""Orthogonality of decoder directions: a penalty on cosines between decoder rows (reference 004).

Till (2024) proposes penalising |cos| between feature directions so that an SAE is not paid for learning
combinations of features; the decoder rows, not the encoder's, are the feature directions (Nanda, cited
there). The per-feature value is averaged over features, so one coefficient means the same across widths.

pairs=all      per feature, the mean penalty over every other row: exact, O(F^2 d); small widths only.
pairs=nearest  per feature, the penalty on its nearest neighbour (largest |cos|). Each feature keeps a list
               of its m nearest rows, recomputed every K steps in blocks (never an [F, F] matrix); a step
               looks only at the nearest of them, re-chosen among the m every `rerank_every` steps
               (O(F m d)); a step in between costs O(F d). The neighbour-list idea is Charlie Steiner's, in
               reference 004's comments. Right after a refresh the value equals the exact one.
features=active  only features that fired in the batch are penalised (sum over them / F, so the term is
               the full one restricted); their neighbours' rows still get gradient, so a rarely-firing
               row cannot sit on an active feature's direction unpushed (Till's reply in the comments).
similarity     g(max(|cos| - margin, 0)) with g = identity (`abs`) or square (`square`): margin > 0 leaves
               near-orthogonal pairs alone and penalises only closely aligned ones.
"""
from __future__ import annotations

import torch
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.losses.base import LossTerm

PAIRS = ("all", "nearest")
FEATURES = ("all", "active")
SIMILARITIES = ("abs", "square")


def unit_rows(W_FD: Tensor) -> Tensor:
    return W_FD / W_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def nearest_neighbours(W_FD: Tensor, m: int, block: int = 4096) -> Tensor:
    """Indices [F, m] of each row's m rows of largest |cos| (itself excluded), computed block by block."""
    F = W_FD.shape[0]
    m = min(m, F - 1)
    Wn = unit_rows(W_FD.detach())
    out = torch.empty(F, m, dtype=torch.long, device=W_FD.device)
    for lo in range(0, F, block):
        c = (Wn[lo:lo + block] @ Wn.t()).abs_()
        rows = torch.arange(c.shape[0], device=c.device)
        c[rows, rows + lo] = -1.0  # not itself
        out[lo:lo + block] = c.topk(m, dim=1, sorted=False).indices
    return out


class _PairDot(torch.autograd.Function):
    """dot_F = W[f] . W[j[f]] for every row f; backward adds into both rows of each pair.

    Autograd's version gathers, multiplies and scatters through three extra [F, D] temporaries; here the
    backward is one product and one sparse-times-dense product.
    """

    @staticmethod
    def forward(ctx, W_FD: Tensor, j_F: Tensor):
        W_J = W_FD.index_select(0, j_F)
        ctx.save_for_backward(W_FD, j_F, W_J)
        return torch.einsum("fd,fd->f", W_FD, W_J)

    @staticmethod
    def backward(ctx, g_F: Tensor):
        W_FD, j_F, W_J = ctx.saved_tensors
        grad = W_J * g_F[:, None]  # d/dW[f] of W[f] . W[j[f]]
        if W_FD.device.type == "cuda":
            return grad.index_add_(0, j_F, W_FD * g_F[:, None]), None  # d/dW[j[f]]
        # on a CPU, index_add_ (a scatter) is slow at any width; a sparse [F, F] product with F entries
        # (S[j[f], f] = g[f]) adds the same rows faster (`python bench/speed/bench_ortho.py` times the term)
        F = W_FD.shape[0]
        S = torch.sparse_coo_tensor(torch.stack([j_F, torch.arange(F, device=j_F.device)]), g_F, (F, F),
                                    check_invariants=False)
        return torch.sparse.addmm(grad, S, W_FD), None


class DecoderOrthogonality(LossTerm):
    """coef * mean over features of g(cos with other decoder rows); see the module docstring for the modes."""

    name = "ortho"
    neighbours_FM: Tensor
    nearest_F: Tensor

    def __init__(self, coef: float = 0.1, pairs: str = "nearest", features: str = "all",
                 similarity: str = "abs", margin: float = 0.0, neighbours: int = 8, refresh_every: int = 100,
                 rerank_every: int = 10, block: int = 4096):
        super().__init__(coef)
        if pairs not in PAIRS:
            raise ConfigError(f"loss.extra.ortho.pairs={pairs!r}: expected one of {PAIRS}")
        if features not in FEATURES:
            raise ConfigError(f"loss.extra.ortho.features={features!r}: expected one of {FEATURES}")
        if similarity not in SIMILARITIES:
            raise ConfigError(f"loss.extra.ortho.similarity={similarity!r}: expected one of {SIMILARITIES}")
        if not 0.0 <= margin < 1.0:
            raise ConfigError(f"loss.extra.ortho.margin={margin!r}: expected a number in [0, 1)")
        for key, v in (("neighbours", neighbours), ("refresh_every", refresh_every), ("rerank_every", rerank_every),
                       ("block", block)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"ortho.{key}={v!r}: expected an integer >= 1")
        self.pairs, self.features, self.similarity, self.margin = pairs, features, similarity, float(margin)
        self.m, self.refresh_every, self.rerank_every, self.block = neighbours, refresh_every, rerank_every, block
        # the neighbour list and the steps since it was computed: in the state dict, so a resumed run uses
        # the list an uninterrupted one would (recomputing it from resumed weights would not be the same)
        self.register_buffer("neighbours_FM", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("nearest_F", torch.zeros(0, dtype=torch.long))  # nearest listed row, per feature
        self.steps_since_refresh = -1  # -1: never built; a Python int (no device sync per step), saved below

    def get_extra_state(self) -> dict:
        return {"steps_since_refresh": self.steps_since_refresh}

    def set_extra_state(self, state: dict) -> None:
        self.steps_since_refresh = int(state["steps_since_refresh"])

    def validate(self, sae) -> None:
        if sae.d_sae < 2:
            raise ConfigError("ortho: needs model.d_sae >= 2 (cosines between decoder rows)")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the list's shape [F, m] is known only once built: take the checkpoint's shape
        for name in ("neighbours_FM", "nearest_F"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.neighbours_FM.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def g(self, cos: Tensor) -> Tensor:
        """The penalty on one cosine: identity or square of max(|cos| - margin, 0)."""
        c = cos.abs()
        if self.margin > 0:
            c = (c - self.margin).clamp_min(0.0)
        return c if self.similarity == "abs" else c * c

    @torch.no_grad()
    def refresh(self, W_dec_FD: Tensor) -> None:
        """Recompute every feature's neighbour list from the current decoder (and its nearest among them)."""
        self.neighbours_FM = nearest_neighbours(W_dec_FD, self.m, self.block)
        self.steps_since_refresh = 0
        self.rerank(W_dec_FD)

    def _tick(self, W_dec_FD: Tensor) -> None:
        """Count training steps; rebuild the list when it is missing, stale or the width changed."""
        if not (self.training and torch.is_grad_enabled()):
            if self.neighbours_FM.shape[0] != W_dec_FD.shape[0]:
                self.refresh(W_dec_FD)
            return
        s = self.steps_since_refresh
        if s < 0 or s >= self.refresh_every or self.neighbours_FM.shape[0] != W_dec_FD.shape[0]:
            self.refresh(W_dec_FD)
        elif s % self.rerank_every == 0:
            self.rerank(W_dec_FD)
        self.steps_since_refresh += 1

    @torch.no_grad()
    def rerank(self, W_dec_FD: Tensor) -> None:
        """Each feature's nearest row among its listed candidates now: m row-dots of [F, D] (no [F, m, D])."""
        Wn = unit_rows(W_dec_FD)
        nbr = self.neighbours_FM
        best = torch.full((Wn.shape[0],), -1.0, device=Wn.device)
        arg = torch.zeros(Wn.shape[0], dtype=torch.long, device=Wn.device)
        for k in range(nbr.shape[1]):
            c = torch.einsum("fd,fd->f", Wn, Wn.index_select(0, nbr[:, k])).abs_()
            better = c > best
            best = torch.where(better, c, best)
            arg = torch.where(better, k, arg)
        self.nearest_F = nbr.gather(1, arg[:, None]).squeeze(1)

    def per_feature(self, W_dec_FD: Tensor, unit_norm: bool = False) -> Tensor:
        """The penalty of each feature [F], differentiable in W_dec."""
        if self.pairs == "all":
            Wn = unit_rows(W_dec_FD)
            pen = self.g(Wn @ Wn.t())
            pen = pen.diagonal_scatter(pen.new_zeros(Wn.shape[0]))  # not itself
            return pen.sum(dim=1) / (Wn.shape[0] - 1)
        self._tick(W_dec_FD)
        j = self.nearest_F
        # the gradient of a max flows through its argmax only: one differentiable cosine per feature,
        # reaching both the feature's row and its neighbour's
        dot = _PairDot.apply(W_dec_FD, j)
        if unit_norm:
            # rows are renormalised every step: the norms are constants here (the gradient part they would
            # add is parallel to each row, which the unit-norm step removes anyway)
            with torch.no_grad():
                n_F = W_dec_FD.norm(dim=1)
        else:
            n_F = W_dec_FD.norm(dim=1)
        return self.g(dot / (n_F * n_F[j]).clamp_min(1e-12))

    def forward(self, x_BD: Tensor, out, sae) -> Tensor:
        pen_F = self.per_feature(sae.W_dec, sae.unit_norm)
        if self.features == "active":
            # a mask, not a gather: no device sync; inactive features add nothing and pass no gradient of
            # their own, while an active feature's term still moves its neighbour's row
            active_F = out.acts_BF.detach().amax(dim=0) > 0
            return self.coef * (pen_F * active_F).sum() / pen_F.shape[0]
        return self.coef * pen_F.mean()

    @torch.no_grad()
    def exact_nearest(self, W_dec_FD: Tensor) -> Tensor:
        """Per feature, g of its exact nearest neighbour (largest |cos|): the reference for pairs=nearest."""
        j = nearest_neighbours(W_dec_FD, 1, self.block).squeeze(1)
        Wn = unit_rows(W_dec_FD)
        return self.g((Wn * Wn[j]).sum(dim=1))
