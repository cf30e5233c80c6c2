"""Metrics, with the conventions of docs/conventions.md.

- MSE: squared error averaged over tokens and d_in, in the scaled space (E||x|| = sqrt(d_in)).
- FVU: sum of squared errors / sum of squared deviations from the mean, over the whole evaluation set.
- L2 ratio: mean over tokens of ||x_hat|| / ||x|| (tokens with x = 0 left out).
- L0: mean number of active features per token.
- dead: features that never fired on the evaluation set; dense: features firing on > `dense_above` of it.
- dense_unexplained (data with a truth): the dense features that are not a copy of a true feature (below).
- gamma (relative reconstruction bias, Gated SAE paper, corrected): E||x_hat||^2 / E[x . x_hat].
"""
from __future__ import annotations

import torch
from torch import Tensor

DENSE_ABOVE = 0.1  # a feature firing on more than 10% of tokens counts as dense
# A dense latent copies a true feature when its decoder row is within COPY_COSINE of it and it fires at most
# COPY_RATE times as often. Measured on the default synthetic data's issue-26 runs: the good runs' dense latents
# (relu, gated, topk at their defaults) sit at cosine 0.89-0.999 and 0.8-1.6x their feature's rate; the
# degenerate runs' (gated loss.l1=2e-3, JumpReLU past its cliff) at cosine 0.3-0.7, or 2.5-80x the rate.
COPY_COSINE, COPY_RATE = 0.8, 2.0


@torch.no_grad()
def batch_metrics(x_BD: Tensor, x_hat_BD: Tensor, acts_BF: Tensor) -> dict[str, Tensor]:
    """Cheap per-batch metrics for training logs (device tensors; no host sync here)."""
    err = (x_hat_BD - x_BD).pow(2).sum()
    dev = (x_BD - x_BD.mean(0)).pow(2).sum()
    return {
        "l0": (acts_BF > 0).sum() / acts_BF.shape[0],
        "mse": err / x_BD.numel(),
        "fvu": err / dev,
        "l2_ratio": (x_hat_BD.norm(dim=1) / x_BD.norm(dim=1).clamp_min(1e-6)).mean(),
    }


@torch.no_grad()
def evaluate(sae, x_ND: Tensor, batch_size: int = 4096, dense_above: float = DENSE_ABOVE) -> dict:
    """Score an SAE on a fixed evaluation set (already in the space the SAE expects)."""
    n, d = x_ND.shape
    sse = xx_sum = l0_sum = ratio_sum = xhat_sq = x_dot_xhat = 0.0
    n_ratio = 0
    counts_F = torch.zeros(sae.d_sae, dtype=torch.float64)
    x_sum = torch.zeros(d, dtype=torch.float64)
    for lo in range(0, n, batch_size):
        x = x_ND[lo:lo + batch_size].float()
        out = sae(x.to(sae.W_dec.dtype))  # an SAE left in the trainer's dtype (trainer.precision=64-true)
        x_hat, acts = out.x_hat_BD.float(), out.acts_BF
        on = acts > 0
        counts_F += on.sum(0).double()
        sse += (x_hat - x).double().pow(2).sum().item()
        x_sum += x.double().sum(0)
        xx_sum += x.double().pow(2).sum().item()
        l0_sum += on.sum().item()
        xn = x.norm(dim=1)
        nz = xn > 0  # tokens with x = 0 (possible in synthetic data) have no ratio
        ratio_sum += (x_hat.norm(dim=1)[nz] / xn[nz]).double().sum().item()
        n_ratio += int(nz.sum())
        xhat_sq += x_hat.double().pow(2).sum().item()
        x_dot_xhat += (x.double() * x_hat.double()).sum().item()
    # sum of squared deviations from the mean = sum x^2 - n * ||mean||^2
    ss_dev = xx_sum - (x_sum.pow(2).sum() / n).item()
    density_F = counts_F / n
    return {
        "l0": l0_sum / n,
        "mse": sse / (n * d),
        "fvu": sse / ss_dev,
        "l2_ratio": ratio_sum / max(n_ratio, 1),
        "gamma": xhat_sq / x_dot_xhat if x_dot_xhat else float("nan"),
        "dead": int((counts_F == 0).sum()),
        "dense": int((density_F > dense_above).sum()),
        "density": density_F.float(),  # per-feature firing frequency, for the histogram
    }


def cosine_matrix(a_ND: Tensor, b_MD: Tensor) -> Tensor:
    a = a_ND / a_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b_MD / b_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.t()


@torch.no_grad()
def ground_truth_recovery(truth_ND: Tensor, W_dec_FD: Tensor, threshold: float = 0.9) -> dict:
    """gt_mmcs: mean over true features of the best cosine with a decoder row; and the fraction above 0.9."""
    best_N = cosine_matrix(truth_ND.float(), W_dec_FD.float()).amax(dim=1)
    return {"gt_mmcs": best_N.mean().item(), f"gt_recovered@{threshold}": (best_N > threshold).float().mean().item()}


@torch.no_grad()
def dense_unexplained(density_F: Tensor, W_dec_FD: Tensor, truth_ND: Tensor, truth_density_N: Tensor,
                      dense_above: float = DENSE_ABOVE, match: float = COPY_COSINE, rate: float = COPY_RATE) -> int:
    """Dense latents that are not a copy of a true feature: firing on more than `dense_above` of the tokens, and
    either no decoder-row cosine of `match` with any true feature or firing more than `rate` times as often as
    the true feature it matches best. On data whose own features fire that often (the default synthetic data's
    most frequent fires on 13.5% of tokens) an SAE that learns them has dense latents; this counts the others."""
    dense_F = density_F > dense_above
    if not dense_F.any():
        return 0
    cos_FN = cosine_matrix(W_dec_FD[dense_F].float(), truth_ND.float())
    best_F, idx_F = cos_FN.max(dim=1)
    copy_F = (best_F >= match) & (density_F[dense_F] <= rate * truth_density_N.float()[idx_F])
    return int((~copy_F).sum())


@torch.no_grad()
def decoder_mmcs(W_dec_FD: Tensor, block: int = 4096) -> Tensor:
    """Per feature, the largest cosine with another decoder row (its mean is `dec_mmcs`)."""
    W = W_dec_FD.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.empty(W.shape[0])
    for lo in range(0, W.shape[0], block):
        c = W[lo:lo + block] @ W.t()
        c[torch.arange(c.shape[0]), torch.arange(lo, lo + c.shape[0])] = -2.0  # not itself
        best[lo:lo + block] = c.amax(dim=1)
    return best


@torch.no_grad()
def feature_mcc(codes_BN: Tensor, acts_BF: Tensor) -> float:
    """MCC: mean over true features of the correlation with the learned feature matched to it one-to-one.

    Correlations are Pearson's over the tokens, between true activations (codes) and learned ones; the
    matching maximises their sum (Hungarian, so no learned feature stands for two true ones). A true
    feature left unmatched (fewer learned than true) or constant counts 0.
    """
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415 - scipy: only the MCC metric needs it

    def standardised(a):
        a = a.double()
        a = a - a.mean(0)
        norm = a.norm(dim=0)
        return (a / norm.where(norm > 0, torch.ones_like(norm))).float()  # constant columns stay 0

    corr_NF = (standardised(codes_BN).t() @ standardised(acts_BF)).clamp(-1, 1)
    rows, cols = linear_sum_assignment(corr_NF.numpy(), maximize=True)
    return float(corr_NF[rows, cols].double().sum() / codes_BN.shape[1])
