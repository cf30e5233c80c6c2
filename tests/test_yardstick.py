"""The PCA yardstick (`saeexp-yardstick`): scored with the SAE's own code, and right against a hand computation."""
import json

import torch
from test_cli import run

from saeexp import metrics as M
from saeexp.jobs.yardstick import PCAReconstruction


def test_pca_fvu_is_the_discarded_variance():
    # on the data it was fitted on, rank r leaves exactly the variance of the d_in - r smallest eigenvalues
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3.0
    eig = torch.linalg.eigvalsh(torch.cov(x.double().T, correction=0))  # ascending
    for rank in (1, 4, 12):
        fvu = M.evaluate(PCAReconstruction(x, rank), x)["fvu"]
        want = float(eig[:12 - rank].sum() / eig.sum())
        assert abs(fvu - want) <= 1e-4 + 1e-3 * want, (rank, fvu, want)


def test_the_console_script_scores_the_pca(tmp_path):
    # the command README's main job runs; here on planted data (no model): one FVU line and the JSON
    args = ["data.d_in=16", "data.n_features=64", "data.groups=4", "+yardstick.rank=4", "+yardstick.sample_tokens=16384"]
    p = run(["saeexp-yardstick", *args], tmp_path)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["rank"] == 4 and 0.0 < out["fvu"] < 1.0, p.stdout
