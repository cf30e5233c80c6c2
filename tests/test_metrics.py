"""Metrics equal a hand computation on a small fixed example."""
import pytest
import torch

from saeexp import metrics as M
from saeexp.sae import ReLUSAE


def _identity_sae():
    # 3 features in 2 dims: f = relu(x @ W_enc); feature 2 can never fire (weights -1 on positive inputs)
    sae = ReLUSAE(d_in=2, d_sae=3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.5, -1.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_metrics_match_hand_computation():
    sae = _identity_sae()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [2.0, 2.0]])
    # f = [[1,0,0],[0,1,0],[3,2,0],[2,1,0]]; x_hat = [[1,0],[0,1],[3,2],[2,1]]
    # errors^2 per token: 0, 1, 4, 1 -> SSE 6; L0 = (1+1+2+2)/4 = 1.5
    # mean x = (1.5, 2); sum of squared deviations = (0.25+2.25+2.25+0.25) + (4+0+4+0) = 13
    # L2 ratio = mean(1/1, 1/2, sqrt(13)/5, sqrt(5)/sqrt(8))
    ev = M.evaluate(sae, x, batch_size=3)  # batches of 3 and 1: the sums must carry across batches
    assert ev["l0"] == pytest.approx(1.5)
    assert ev["mse"] == pytest.approx(6 / 8)
    assert ev["fvu"] == pytest.approx(6 / 13)
    ratio = (1 + 0.5 + 13 ** 0.5 / 5 + (5 / 8) ** 0.5) / 4
    assert ev["l2_ratio"] == pytest.approx(ratio)
    assert ev["dead"] == 1  # feature 2 never fired
    assert ev["dense"] == 2  # features 0 and 1 fire on > 10% of tokens
    # gamma = E||x_hat||^2 / E[x . x_hat] = (1+1+13+5) / (1+2+17+6)
    assert ev["gamma"] == pytest.approx(20 / 26)
    assert ev["density"].tolist() == pytest.approx([0.75, 0.75, 0.0])

    bm = M.batch_metrics(x, sae(x).x_hat_BD, sae(x).acts_BF)
    assert bm["l0"].item() == pytest.approx(1.5)
    assert bm["fvu"].item() == pytest.approx(6 / 13)


def test_dead_window_counts_tokens():
    sae = _identity_sae()
    sae.update_firing(torch.tensor([True, False, False]), 100)
    sae.update_firing(torch.tensor([False, True, False]), 50)
    assert sae.tokens_since_fired.tolist() == [50, 0, 150]
    assert sae.dead_mask(100).tolist() == [False, False, True]


def test_ground_truth_recovery():
    truth = torch.eye(4)
    W_dec = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.8, 0.6, 0.0], [0.0, 0.0, 0.0, -1.0]])
    r = M.ground_truth_recovery(truth, W_dec)
    # best cosines per true feature: 1, 0.8, 0.6, 0 (a negative cosine is no match)
    assert r["gt_mmcs"] == pytest.approx((1 + 0.8 + 0.6 + 0.0) / 4)
    assert r["gt_recovered@0.9"] == pytest.approx(0.25)
    best = M.decoder_mmcs(W_dec)
    assert best.tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_dense_unexplained_counts_dense_latents_that_copy_no_true_feature():
    truth = torch.eye(4)
    truth_density = torch.tensor([0.15, 0.05, 0.10, 0.01])
    W_dec = torch.tensor([[1.0, 0.0, 0.0, 0.0],    # copies feature 0, fires at 0.16 / 0.15: explained
                          [0.0, 1.0, 0.0, 0.0],    # copies feature 1 but fires 0.12 / 0.05 = 2.4x as often
                          [0.0, 0.6, 0.8, 0.0],    # cosine 0.8 with feature 2 (at the line), 1.5x its rate
                          [0.5, 0.5, 0.5, 0.5],    # cosine 0.5 with every feature: a copy of none
                          [0.0, 0.0, 0.0, 1.0]])   # fires on exactly 10%: not dense, not counted
    density = torch.tensor([0.16, 0.12, 0.15, 0.5, 0.1])
    assert M.dense_unexplained(density, W_dec, truth, truth_density) == 2  # rows 1 and 3
    # no dense latent at all: nothing to explain
    assert M.dense_unexplained(density.clamp(max=0.1), W_dec, truth, truth_density) == 0


def test_feature_mcc_matches_hand_computation():
    # true A = [1,1,0,0], B = [0,1,1,0]; learned f0 = [1,2,1,0] (correlation 1/sqrt2 with both),
    # f1 = 3 * A (correlation 1 with A, 0 with B), f2 never fires (correlation 0)
    codes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    acts = torch.tensor([[1.0, 3.0, 0.0], [2.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # one-to-one: A -> f1 (1), B -> f0 (1/sqrt2); f0 cannot serve A too
    assert M.feature_mcc(codes, acts) == pytest.approx((1 + 2 ** -0.5) / 2, abs=1e-6)
    # fewer learned than true features: the unmatched true feature counts 0
    assert M.feature_mcc(codes, acts[:, 1:2]) == pytest.approx(0.5, abs=1e-6)
    # a perfect, permuted and rescaled dictionary scores 1
    assert M.feature_mcc(codes, torch.stack([5 * codes[:, 1], 0.1 * codes[:, 0]], 1)) == pytest.approx(1.0, abs=1e-6)
