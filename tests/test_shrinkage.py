"""Reference 003's closed form: one binary feature trained under (y - x)^2 + c|f| gives activation 1 - c/2.

Only holds with the unit-norm constraint implemented as saeexp does it (gradient parallel to the decoder
row removed, rows renormalised): otherwise the decoder row grows and the activation shrinks instead.
"""
import pytest
import torch

from saeexp.losses import L1, MSE
from saeexp.sae import ReLUSAE
from saeexp.train.step import manual_step


@pytest.mark.parametrize("c", [0.2, 0.5])
def test_binary_feature_activation_is_one_minus_c_over_2(c):
    torch.manual_seed(0)
    sae = ReLUSAE(d_in=1, d_sae=1, decoder_norm="unit")
    with torch.no_grad():
        sae.W_dec.fill_(1.0)
        sae.W_enc.fill_(0.5)
    sae.b_enc.requires_grad_(False)  # biases fixed at zero
    sae.b_dec.requires_grad_(False)
    terms = [MSE(), L1(c)]
    opt = torch.optim.Adam([sae.W_enc, sae.W_dec], lr=5e-3)
    p = 0.3
    for _ in range(1500):
        manual_step(sae, terms, opt, (torch.rand(512, 1) < p).float())
    act = sae.encode(torch.ones(1, 1)).item()
    assert sae.W_dec.item() == pytest.approx(1.0)
    assert act == pytest.approx(1 - c / 2, abs=0.01)
