"""Decoder orthogonality (reference 004): zero when rows are orthogonal, the neighbour list agrees with the exact
nearest neighbour, `features=active` still moves the neighbours' rows, and training with it lowers dec_mmcs."""
import itertools

import pytest
import torch
from conftest import compose_cfg

from saeexp.data.synthetic import SyntheticSource
from saeexp.losses import L1, MSE
from saeexp.losses.ortho import DecoderOrthogonality
from saeexp.metrics import decoder_mmcs
from saeexp.sae.base import SAEOutput
from saeexp.sae.relu import ReLUSAE
from saeexp.train.step import manual_step

MODES = list(itertools.product(["all", "nearest"], ["all", "active"], ["abs", "square"], [0.0, 0.3]))


def _out(acts_BF):
    B, F = acts_BF.shape
    return SAEOutput(torch.zeros(B, 1), acts_BF, acts_BF)


def _sae(F, D, seed=0):
    return ReLUSAE(D, F, seed=seed)


def _brute_nearest(W, g):
    Wn = W / W.norm(dim=1, keepdim=True)
    c = (Wn @ Wn.t()).abs()
    c.fill_diagonal_(-1.0)
    return g(c.amax(dim=1))


@pytest.mark.parametrize("pairs,features,similarity,margin", MODES)
def test_zero_for_orthogonal_rows_positive_otherwise(pairs, features, similarity, margin):
    sae = _sae(16, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    term = DecoderOrthogonality(1.0, pairs, features, similarity, margin, neighbours=3, block=5)
    acts = torch.rand(8, 16)
    with torch.no_grad():
        sae.W_dec.copy_(q * torch.linspace(0.5, 2.0, 16)[:, None])  # norms do not matter, only cosines
    assert term(None, _out(acts), sae).abs().item() < 1e-6
    with torch.no_grad():
        sae.W_dec[1] = sae.W_dec[0] + 0.1 * sae.W_dec[2]  # rows 0 and 1 now nearly parallel
    term.refresh(sae.W_dec)
    assert term(None, _out(acts), sae).item() > 1e-3


def test_neighbour_list_equals_exact_nearest_after_refresh():
    torch.manual_seed(0)
    W = torch.randn(200, 12)
    for similarity, margin in (("abs", 0.0), ("square", 0.0), ("abs", 0.2)):
        term = DecoderOrthogonality(1.0, "nearest", similarity=similarity, margin=margin, neighbours=4, block=37)
        term.refresh(W)
        got = term.per_feature(W)
        torch.testing.assert_close(got, _brute_nearest(W, term.g), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, term.exact_nearest(W), rtol=1e-5, atol=1e-6)
    # the list holds each row's m largest |cos| (blockwise; no row lists itself)
    c = (torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W, dim=1).t()).abs()
    c.fill_diagonal_(-1)
    want = c.topk(4, dim=1).indices.sort(dim=1).values
    assert torch.equal(term.neighbours_FM.sort(dim=1).values, want)


def test_list_refreshes_every_K_steps_and_is_in_the_state_dict():
    sae = _sae(32, 8)
    term = DecoderOrthogonality(1.0, "nearest", neighbours=2, refresh_every=3)
    acts = torch.rand(4, 32)
    term(None, _out(acts), sae)  # builds the list
    first = term.neighbours_FM.clone()
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(32, 8))
    term(None, _out(acts), sae)
    term(None, _out(acts), sae)
    assert torch.equal(term.neighbours_FM, first)  # still the old list: K = 3 steps
    term(None, _out(acts), sae)
    assert not torch.equal(term.neighbours_FM, first)  # rebuilt on the 4th step
    # a fresh term loading the state dict continues with the same list and step count
    fresh = DecoderOrthogonality(1.0, "nearest", neighbours=2, refresh_every=3)
    fresh.load_state_dict(term.state_dict())
    assert torch.equal(fresh.neighbours_FM, term.neighbours_FM)
    assert int(fresh.steps_since_refresh) == int(term.steps_since_refresh) == 1


@pytest.mark.parametrize("pairs", ["all", "nearest"])
def test_active_only_penalises_active_features_and_moves_their_neighbours(pairs):
    sae = _sae(6, 6)
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(6))
        sae.W_dec[3] = torch.tensor([0.9, 0.1, 0, 0, 0, 0.0])  # row 3 sits on row 0's direction
    acts = torch.zeros(4, 6)
    acts[:, 0] = 1.0  # only feature 0 fires; feature 3 is its silent neighbour
    term = DecoderOrthogonality(1.0, pairs, "active", neighbours=2)
    loss = term(None, _out(acts), sae)
    loss.backward()
    assert loss.item() > 0
    g = sae.W_dec.grad.norm(dim=1)
    assert g[0] > 0 and g[3] > 0  # the neighbour's row is pushed away too
    assert g[2] == 0 and g[4] == 0 and g[5] == 0  # unrelated rows are not touched
    # only active features count: silent feature 3 alone contributes nothing
    acts_3 = torch.zeros(4, 6)
    acts_3[:, 2] = 1.0
    assert term(None, _out(acts_3), sae).item() == pytest.approx(0.0, abs=1e-7)


def test_coefficient_means_the_same_across_widths():
    # F/2 pairs of rows at cosine 0.6, pairs mutually orthogonal: the same value at every width
    vals = []
    for F in (8, 32):
        W = torch.zeros(F, F)
        for k in range(F // 2):
            W[2 * k, 2 * k] = 1.0
            W[2 * k + 1, 2 * k] = 0.6
            W[2 * k + 1, 2 * k + 1] = 0.8
        sae = _sae(F, F)
        with torch.no_grad():
            sae.W_dec.copy_(W)
        vals.append(DecoderOrthogonality(1.0, "nearest")(None, _out(torch.rand(2, F)), sae).item())
    assert vals[0] == pytest.approx(0.6, rel=1e-5) and vals[1] == pytest.approx(0.6, rel=1e-5)


def _train(ortho, steps=250):
    torch.manual_seed(0)
    src = SyntheticSource(d_in=16, n_features=48, max_p=0.2, seed=0)
    sae = ReLUSAE(16, 64, seed=0)
    terms = [MSE(1.0), L1(3e-3)] + ([ortho] if ortho is not None else [])
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    batches = src.batches(512, seed=0)
    for _ in range(steps):
        manual_step(sae, terms, opt, next(batches))
    return decoder_mmcs(sae.W_dec.detach()).mean().item()



@pytest.mark.parametrize("pairs,features,margin,coef", [("nearest", "all", 0.0, 0.5),
                                                        ("nearest", "active", 0.0, 0.5), ("all", "all", 0.3, 2.0)])
def test_training_with_ortho_lowers_dec_mmcs(pairs, features, margin, coef, one_thread):
    # all pairs with margin 0 lowers the mean |cos| rather than each feature's largest; a margin targets the
    # close pairs that dec_mmcs measures (and each pair weighs 1 / (F - 1) there, hence a larger coef)
    base = _train(None)
    with_ortho = _train(DecoderOrthogonality(coef, pairs, features, margin=margin, neighbours=4, refresh_every=10))
    assert with_ortho < base - 0.05, (base, with_ortho)


@pytest.mark.parametrize("option", ["nearest", "active", "all"])
def test_one_override_adds_the_term_alongside_the_penalty(option, tmp_path):
    from saeexp.build.plan import plan_run

    cfg = compose_cfg([f"ortho={option}", "ortho.coef=0.25", "model.d_sae=64"], run_dir=tmp_path)
    p = plan_run(cfg)
    penalties = p.penalties
    names = [p.name for p in penalties]
    assert names[0] == "l1" and "ortho" in names
    ortho = penalties[names.index("ortho")]
    assert ortho.coef == 0.25 and ortho.pairs == ("all" if option == "all" else "nearest")
    assert ortho.features == ("active" if option == "active" else "all")
    assert "ortho" not in [p.name for p in plan_run(compose_cfg(["model.d_sae=64"], run_dir=tmp_path)).penalties]


def test_dec_mmcs_is_logged_during_training(tmp_path, one_thread):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import Logger

    from saeexp.build.plan import plan_run
    from saeexp.train.datamodule import ActivationDataModule
    from saeexp.train.module import DEC_MMCS_EVERY_LOGS, SAEModule

    cfg = compose_cfg(["model.d_sae=32", "train.tokens=6144", "train.batch_size=256", "ortho=nearest"],
                      run_dir=tmp_path)
    p = plan_run(cfg)
    source, sae, penalties = p.source, p.sae, p.penalties
    batch_size, steps = p.schedule.batch_size, p.schedule.steps
    module = SAEModule(sae, penalties, instantiate(cfg.optimizer), total_steps=steps, log_every=1)
    seen = []

    class Capture(Logger):
        name, version = "capture", 0

        def log_metrics(self, metrics, step=None):
            if "train/dec_mmcs" in metrics:
                seen.append((step, metrics["train/dec_mmcs"]))

        def log_hyperparams(self, *args, **kwargs):
            pass

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=Capture(), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=ActivationDataModule(source, batch_size, cfg.seed))
    # Lightning re-sends the last value at every step; a fresh one appears every 10th log step and at the end
    fresh = [s for i, (s, v) in enumerate(seen) if i == 0 or v != seen[i - 1][1]]
    assert fresh == [0, DEC_MMCS_EVERY_LOGS, 2 * DEC_MMCS_EVERY_LOGS, steps - 1]
    assert seen[-1][1] == pytest.approx(decoder_mmcs(sae.W_dec.detach()).mean().item(), abs=0.05)
