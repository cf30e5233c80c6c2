"""The PCA yardstick: what a rank-r linear reconstruction scores on the same held-out data as an SAE.

An SAE spliced into a model should at least recover the next-token loss that the top-r principal components
of the activations recover (r = 64 for the main job). `saeexp-yardstick` composes the same config as `saeexp`
(`experiment=demo`, any overrides), fits PCA on training activations and scores the reconstruction
mean + (x - mean) U U^T with the SAE's own code: FVU on the held-out set and, for data=lm, CE loss recovered
on the same held-out windows, positions and BOS handling.
"""
from __future__ import annotations

import json

import hydra
import torch
from omegaconf import DictConfig

from saeexp.cli import CONF_DIR, _fail
from saeexp.errors import ConfigError
from saeexp.sae.base import SAEOutput


class PCAReconstruction(torch.nn.Module):
    """x -> mean + (x - mean) U U^T, with U the top-`rank` principal directions [D, rank]; returns an SAEOutput."""

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

    def forward(self, x_ND: torch.Tensor) -> SAEOutput:
        z_NR = (x_ND - self.mean_D) @ self.U_DR
        x_hat = torch.addmm(self.mean_D, z_NR, self.U_DR.T)
        return SAEOutput(x_hat, z_NR, z_NR)


def yardstick(cfg: DictConfig) -> dict:
    """FVU (and CE loss recovered on data=lm) of the rank-r PCA reconstruction; printed and returned."""
    from saeexp import metrics as M
    from saeexp.train.run import make

    ys = cfg.get("yardstick") or {}  # `+yardstick.rank=32 +yardstick.sample_tokens=...` override these
    rank, n_sample = int(ys.get("rank", 64)), int(ys.get("sample_tokens", 262_144))
    source = make(cfg.data)
    source.prepare()
    print(f"saeexp-yardstick: fitting rank-{rank} PCA on {n_sample:,} training tokens", flush=True)
    pca = PCAReconstruction(source.sample(n_sample, seed=cfg.seed), rank)
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


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig):
    try:
        return yardstick(cfg)
    except ConfigError as e:
        _fail(e)


def main() -> None:
    # no run directory, no outputs: the yardstick only reads the data config
    import sys

    from saeexp.cli import check_renamed

    check_renamed(sys.argv[1:])
    sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    _main()
