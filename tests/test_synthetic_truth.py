"""The true activations a synthetic source reports are the ones that made its activations (MCC scores against them)."""
import pytest
import torch

from saeexp.data.synthetic import SyntheticSource


def test_draw_returns_the_codes_behind_x():
    src = SyntheticSource(d_in=16, n_features=40, max_p=0.3, min_magnitude=0.5, groups=4, group_size=2, noise=0.0)
    codes, x = src.draw(512, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, codes @ src.truth())
    fired = codes[codes > 0]
    assert fired.numel() > 0 and fired.min() >= 0.5  # magnitudes bounded away from zero


def test_an_sae_with_the_same_seed_does_not_start_on_the_truth():
    # data.seed defaults to the run's seed: the planted directions must not come from the SAE's init stream
    from saeexp.metrics import ground_truth_recovery
    from saeexp.sae import ReLUSAE

    src = SyntheticSource(d_in=32, n_features=128, seed=0)
    sae = ReLUSAE(d_in=32, d_sae=256, seed=0)
    assert ground_truth_recovery(src.truth(), sae.W_dec.detach())["gt_recovered@0.9"] == 0.0


def test_truth_density_is_each_features_firing_rate():
    # what dense_unexplained compares a dense latent's rate with: p_i, and 1 - (1 - p_i)(1 - group_p) in a group
    src = SyntheticSource(d_in=16, n_features=40, max_p=0.3, groups=4, group_size=2, group_p=0.05)
    codes, _ = src.draw(200_000, torch.Generator().manual_seed(0))
    p = src.truth_density()
    seen = (codes > 0).float().mean(0)
    assert p[0].item() == pytest.approx(1 - 0.7 * 0.95) and p[8].item() == pytest.approx(0.3 * 9 ** -0.5)
    assert ((seen - p).abs() <= 5 * (p * (1 - p) / 200_000).sqrt() + 1e-4).all()  # within 5 standard errors
