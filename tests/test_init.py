"""Initialisation from data (saeexp/train/init.py): the geometric median, and why b_dec starts there."""
import numpy as np
import torch
from conftest import compose_cfg, train_cfg

from saeexp import load_sae
from saeexp.data.synthetic import SyntheticSource
from saeexp.train.init import b_dec_init, geometric_median


def test_geometric_median_by_hand():
    # on a line the geometric median is the ordinary median: 2, where the mean (21.2) follows the outlier
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    assert torch.allclose(geometric_median(x), torch.tensor([2.0, 0.0]), atol=1e-2)
    # the four corners of a square: its centre, by symmetry
    sq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(geometric_median(sq), torch.tensor([1.0, 1.0]), atol=1e-4)
    assert torch.equal(b_dec_init("zeros", x), torch.zeros(2))
    assert torch.allclose(b_dec_init("mean", x), x.mean(0))


def test_b_dec_starts_at_the_median_because_adam_cannot_walk_to_a_large_offset(tmp_path):
    """A language model's residual stream sits far from 0, mostly along a few coordinates (SmolLM2-135M's layer 3:
    |mean| 17.3 of E||x|| 24 after scaling, 13.5 of it on one coordinate). Adam moves each b_dec coordinate by
    about lr per step, so from zeros b_dec cannot get there in a run's first hundreds of steps and latents spend
    themselves on the offset instead (README, Training quality). Planted features plus such an offset, 146 steps."""
    src = SyntheticSource(d_in=32, n_features=256, max_p=0.2, alpha=0.5, magnitude="exponential",
                          min_magnitude=0.5, noise=0.02, groups=16, group_size=2, group_p=0.005)
    _, x = src.draw(300_000 + 16384, torch.Generator().manual_seed(1))
    offset = torch.zeros(32)
    offset[0] = x.norm(dim=1).mean()  # |offset| ends 0.7 of E||x||, as SmolLM2's mean
    np.save(tmp_path / "x.npy", (x + offset).numpy())
    runs = {}
    for init in ("geometric_median", "zeros"):  # the default, then SAELens' init
        run_dir = tmp_path / init
        runs[init] = train_cfg(compose_cfg([
            "model=relu", "loss=l1_decoder_norm", "loss.l1=1e-1", "data=file", f"data.path={tmp_path / 'x.npy'}",
            "data.d_in=32", "model.d_sae=512", "train.batch_size=2048", "train.tokens=300_000",
            "train.log_every=1000", "train.checkpoint_every=100000", f"train.b_dec_init={init}"], run_dir=run_dir))
        runs[init]["b_dec0"] = load_sae(run_dir / "sae").b_dec[0].item()
    median, zeros = runs["geometric_median"], runs["zeros"]
    # measured (2026-12-02): median L0 21.9, FVU 0.736; zeros L0 86.1, FVU 0.762
    assert median["l0"] < 0.5 * zeros["l0"] and median["fvu"] <= zeros["fvu"], runs
    # b_dec (in the data's units) sits on the offset from the median, and is still far from it from zeros
    assert abs(median["b_dec0"] - offset[0].item()) < 0.1 * offset[0].item(), runs
    assert zeros["b_dec0"] < 0.5 * offset[0].item(), runs
