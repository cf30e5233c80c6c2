"""What a feature dashboard shows, computed from the held-out set in bounded memory.

The held-out activations are streamed in chunks; per feature a running top-k (values and rows) is merged with
each chunk's own top-k, so memory is O(chunk x F + k x F) whatever the token count. A second pass fills each
feature's activation histogram (bins over (0, its max]). Token contexts are read window by window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

TOP, HALF, BINS, LOGIT_TOKENS, NEIGHBOURS = 20, 16, 24, 10, 5


@dataclass
class FeatureStats:
    """Per-feature arrays (F features, K top contexts, B histogram bins)."""

    n_tokens: int
    density_F: Tensor
    max_F: Tensor
    top_rows_FK: Tensor  # held-out row of each top context, -1 where fewer fired
    top_vals_FK: Tensor
    hist_FB: Tensor
    extras: dict = field(default_factory=dict)


@torch.no_grad()
def stream_top(sae, chunks, d_sae: int, k: int = TOP) -> tuple[Tensor, Tensor, Tensor, int]:
    """(top values [k, F], their rows [k, F], firing counts [F], tokens seen) over an iterator of raw chunks."""
    vals_KF = torch.full((k, d_sae), -torch.inf)
    rows_KF = torch.full((k, d_sae), -1, dtype=torch.long)
    count_F = torch.zeros(d_sae, dtype=torch.long)
    n = 0
    for x_CD in chunks:
        acts_CF = sae.encode(x_CD).float()
        count_F += (acts_CF > 0).sum(0)
        v_KF, i_KF = acts_CF.topk(min(k, acts_CF.shape[0]), dim=0)
        all_v, all_r = torch.cat([vals_KF, v_KF]), torch.cat([rows_KF, i_KF + n])
        best = all_v.topk(k, dim=0).indices
        vals_KF, rows_KF = all_v.gather(0, best), all_r.gather(0, best)
        n += acts_CF.shape[0]
    rows_KF[~(vals_KF > 0)] = -1  # a context is a token where the feature fired
    return vals_KF, rows_KF, count_F, n


@torch.no_grad()
def histograms(sae, chunks, max_F: Tensor, bins: int = BINS) -> Tensor:
    """Counts [F, bins] of each feature's non-zero activations in equal bins over (0, max_F]."""
    F = max_F.shape[0]
    hist = torch.zeros(F * bins, dtype=torch.long)
    scale_F = bins / max_F.clamp_min(1e-12)
    for x_CD in chunks:
        acts_CF = sae.encode(x_CD).float()
        c, f = (acts_CF > 0).nonzero(as_tuple=True)
        b = (acts_CF[c, f] * scale_F[f]).ceil().long().clamp(1, bins) - 1
        hist += torch.bincount(f * bins + b, minlength=F * bins)
    return hist.view(F, bins)


@torch.no_grad()
def context_acts(sae, read_rows, top_rows_FK: Tensor, per: int, half: int = HALF, block_rows: int = 4096) -> Tensor:
    """Each top context's activations at positions -half..+half around its token, [F, K, 2 half + 1].

    Rows are held-out activation rows, `per` to a token window; outside the window's trained positions (BOS,
    or past either end) the value is 0. Runs of whole windows (about block_rows rows) are read and encoded at
    once, and every context in them gathered in one indexing operation.
    """
    F, K = top_rows_FK.shape
    out = torch.zeros(F, K, 2 * half + 1)
    f_N, k_N = (top_rows_FK >= 0).nonzero(as_tuple=True)
    rows_N = top_rows_FK[f_N, k_N]
    win_N = rows_N // per
    offs = torch.arange(-half, half + 1)
    per_block = max(1, block_rows // per)
    blk_N = win_N // per_block
    for b in blk_N.unique().tolist():
        sel = (blk_N == b).nonzero().squeeze(1)
        w0, w1 = b * per_block, int(win_N[sel].max()) + 1
        acts_TF = sae.encode(read_rows(w0 * per, w1 * per)).float()
        pos_N = rows_N[sel] % per
        ok = ((pos_N[:, None] + offs) >= 0) & ((pos_N[:, None] + offs) < per)
        at = (rows_N[sel] - w0 * per)[:, None] + offs  # rows in the block; masked where outside the window
        vals = acts_TF[at.clamp(0, acts_TF.shape[0] - 1), f_N[sel][:, None]]
        out[f_N[sel], k_N[sel]] = torch.where(ok, vals, 0.0)
    return out


@torch.no_grad()
def logit_effects(W_dec_FD: Tensor, W_U_DV: Tensor, n: int = LOGIT_TOKENS, block: int = 256):
    """The n tokens each decoder direction promotes and suppresses most through the unembedding (ids, values)."""
    W_U = W_U_DV.float()
    top_i, top_v, bot_i, bot_v = [], [], [], []
    for lo in range(0, W_dec_FD.shape[0], block):
        logits_BV = W_dec_FD[lo:lo + block].float() @ W_U
        t = logits_BV.topk(n, dim=1)
        b = logits_BV.topk(n, dim=1, largest=False)
        top_i.append(t.indices)
        top_v.append(t.values)
        bot_i.append(b.indices)
        bot_v.append(b.values)
    return torch.cat(top_i), torch.cat(top_v), torch.cat(bot_i), torch.cat(bot_v)


@torch.no_grad()
def neighbours(W_dec_FD: Tensor, n: int = NEIGHBOURS, block: int = 1024) -> tuple[Tensor, Tensor]:
    """Each feature's n nearest decoder rows by cosine (ids, cosines), in blocks (no F x F matrix)."""
    W = W_dec_FD.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, W.shape[0] - 1)
    ids, cos = [], []
    for lo in range(0, W.shape[0], block):
        c_BF = W[lo:lo + block] @ W.t()
        idx = torch.arange(lo, min(lo + block, W.shape[0]))
        c_BF[torch.arange(len(idx)), idx] = -torch.inf  # not itself
        t = c_BF.topk(n, dim=1)
        ids.append(t.indices)
        cos.append(t.values)
    return torch.cat(ids), torch.cat(cos)
