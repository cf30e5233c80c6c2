"""The PCA yardstick: what a rank-r linear reconstruction scores on the same held-out data as an SAE.

An SAE spliced into a model should at least recover the next-token loss that the top-r principal components
of the activations recover (r = 64 for the main job). `saeexp-yardstick` composes the same config as `saeexp`
(`experiment=demo`, any overrides), fits PCA on training activations and scores the reconstruction
mean + (x - mean) U U^T with the SAE's own code: FVU on the held-out set and, for data=lm, CE loss recovered
on the same held-out windows, positions and BOS handling.
"""
from __future__ import annotations

import json

import torch

from saeexp import metrics as M
from saeexp.errors import ConfigError
from saeexp.plan import YardstickPlan
from saeexp.sae.base import SAEOutput


class PCAReconstruction(torch.nn.Module):
    """x -> mean + (x - mean) U U^T, with U the top-`rank` principal directions [D, rank]; returns an SAEOutput."""

    mean_D: torch.Tensor
    U_DR: torch.Tensor

    def __init__(self, sample_ND: torch.Tensor, rank: int):
        super().__init__()
        if not 1 <= rank <= sample_ND.shape[1]:
            raise ConfigError(f"yardstick.rank={rank!r}: expected 1 <= rank <= d_in={sample_ND.shape[1]}")
        mean_D = sample_ND.mean(0)
        # principal directions from the covariance (float64: d_in x d_in is small, and the spectrum is steep)
        xc = (sample_ND - mean_D).double()
        _, vecs = torch.linalg.eigh(xc.T @ xc / len(xc))
        self.register_buffer("mean_D", mean_D)
        self.register_buffer("U_DR", vecs[:, -rank:].flip(1).float().contiguous())
        self.d_sae = rank  # what metrics.evaluate counts features over
        self.dummy = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # device/dtype for callers

    @property
    def W_dec(self) -> torch.Tensor:
        """The decoder rows [rank, D] (x_hat = mean + z W_dec), as an SAE's: scoring reads its dtype and device."""
        return self.U_DR.T

    def forward(self, x_ND: torch.Tensor) -> SAEOutput:
        z_NR = (x_ND - self.mean_D) @ self.U_DR
        x_hat = torch.addmm(self.mean_D, z_NR, self.U_DR.T)
        return SAEOutput(x_hat, z_NR, z_NR)


def yardstick(plan: YardstickPlan) -> dict:
    """FVU (and CE loss recovered on data=lm) of the rank-r PCA reconstruction; printed and returned."""
    source, rank, n_sample = plan.source, plan.rank, plan.sample_tokens
    source.prepare()
    print(f"saeexp-yardstick: fitting rank-{rank} PCA on {n_sample:,} training tokens", flush=True)
    pca = PCAReconstruction(source.sample(n_sample, seed=plan.seed), rank)
    out = {"rank": rank, "fvu": M.evaluate(pca, source.heldout())["fvu"]}
    if source.provides_model_eval:
        print("saeexp-yardstick: CE evaluation with the PCA reconstruction spliced in", flush=True)
        out.update(source.model_eval(pca, 1.0))
    line = f"rank-{rank} PCA yardstick: FVU {out['fvu']:.4g}"
    if "ce_loss_recovered" in out:
        line += f", CE loss recovered {out['ce_loss_recovered']:.4f} +- {out['ce_loss_recovered_stderr']:.4f}"
    print(line)
    print(json.dumps(out, sort_keys=True))
    return out

