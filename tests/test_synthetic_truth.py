"""The true activations a synthetic source reports are the ones that made its activations (MCC scores against them)."""
import torch

from saeexp.data.synthetic import SyntheticSource


def test_draw_returns_the_codes_behind_x():
    src = SyntheticSource(d_in=16, n_features=40, max_p=0.3, min_magnitude=0.5, groups=4, group_size=2, noise=0.0)
    codes, x = src.draw(512, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, codes @ src.truth())
    fired = codes[codes > 0]
    assert fired.numel() > 0 and fired.min() >= 0.5  # magnitudes bounded away from zero
