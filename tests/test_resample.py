"""Anthropic resampling: dead features come back, exactly their optimiser state is reset, the LR re-warms,
a resumed run resamples as an uninterrupted one; every model trains with each resampler (and ortho)."""
import itertools
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF, SimulatedCrash, compose_cfg
from lightning.pytorch.callbacks import Callback

from saeexp.data.synthetic import SyntheticSource
from saeexp.losses import L1, MSE
from saeexp.resample.anthropic import AnthropicResampler
from saeexp.resample.callback import Resampling
from saeexp.sae.relu import ReLUSAE
from saeexp.train.step import manual_step

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
RESAMPLERS = sorted(p.stem for p in (CONF / "resampler").glob("*.yaml"))



class _Module(SimpleNamespace):
    """What the resampler reads from the training module: sae, total_steps, optimizers()."""

    def optimizers(self):
        return self.opt


def _setup(n_dead=5, F=24, D=8):
    torch.manual_seed(0)
    src = SyntheticSource(d_in=D, n_features=16, max_p=0.3, seed=0)
    sae = ReLUSAE(D, F, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    batches = src.batches(256, seed=0)
    with torch.no_grad():
        sae.b_enc[:n_dead] = -1e3  # these features can never fire
    for step in range(3):  # some optimiser state everywhere
        manual_step(sae, [MSE(), L1(1e-3)], opt, next(batches), step)
    for st in opt.state.values():  # dead rows got no gradient: give every entry a moment worth resetting
        st["exp_avg"].normal_()
        st["exp_avg_sq"].uniform_(0.1, 1.0)
    return src, sae, opt, batches


def test_resampling_revives_dead_features_and_resets_only_their_adam_rows():
    src, sae, opt, batches = _setup()
    dead = torch.arange(5)
    assert torch.equal(sae.dead_mask(256).nonzero().squeeze(1), dead)
    rs = AnthropicResampler(at=[0.5], window_tokens=256, reservoir_tokens=1024, reservoir_steps=2)
    module = _Module(sae=sae, total_steps=10, opt=opt)
    for step in range(3):
        x = next(batches)
        rs.observe(module, x, step)
    before = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in sae.named_parameters()}
    params_before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    live_enc_norm = sae.W_enc.detach()[:, 5:].norm(dim=0).mean()

    assert rs.maybe_resample(module, 3) == 0  # 4 steps done < 5: not yet
    assert rs.maybe_resample(module, 4) == 5
    assert rs.done == [True] and rs.last_step == 4 and rs.history == [(4, 5)]
    assert rs.maybe_resample(module, 5) == 0  # each point once

    live = torch.ones(24, dtype=torch.bool)
    live[dead] = False
    # new directions: unit decoder rows equal to normalised reservoir inputs; encoder rows along them
    dec = sae.W_dec.detach()[dead]
    torch.testing.assert_close(dec.norm(dim=1), torch.ones(5))
    res = torch.nn.functional.normalize(rs.reservoir_ND[:rs.filled], dim=1)
    assert ((dec @ res.t()).amax(dim=1) > 1 - 1e-5).all()
    enc = sae.W_enc.detach()[:, dead].t()
    torch.testing.assert_close(enc, dec * 0.2 * live_enc_norm)
    assert (sae.b_enc.detach()[dead] == 0).all()
    # live features' parameters are untouched
    torch.testing.assert_close(sae.W_dec.detach()[live], params_before["W_dec"][live], rtol=0, atol=0)
    torch.testing.assert_close(sae.W_enc.detach()[:, live], params_before["W_enc"][:, live], rtol=0, atol=0)
    # Adam: the moments of exactly the resampled rows are zero; every other entry is as before
    rows = {"W_enc": (1, dead), "b_enc": (0, dead), "W_dec": (0, dead)}
    for name, p in sae.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            now, old = opt.state[p][key], before[name][key]
            if name in rows:
                dim, idx = rows[name]
                assert (now.index_select(dim, idx) == 0).all(), (name, key)
                keep = torch.ones(now.shape[dim], dtype=torch.bool)
                keep[idx] = False
                assert torch.equal(now.index_select(dim, keep.nonzero().squeeze(1)),
                                   old.index_select(dim, keep.nonzero().squeeze(1))), (name, key)
                assert (old.index_select(dim, idx) != 0).any()  # there was something to reset
            else:
                assert torch.equal(now, old), (name, key)
        assert torch.equal(opt.state[p]["step"], before[name]["step"])
    # revived: the resampled features fire on fresh data, and their dead counters restarted
    assert (sae.tokens_since_fired[dead] == 0).all()
    fired = (sae(next(batches)).acts_BF > 0).any(dim=0)
    assert fired[dead].all()


def test_inputs_drawn_in_proportion_to_squared_error():
    sae = ReLUSAE(4, 8, seed=0)
    with torch.no_grad():
        sae.W_dec.zero_()  # x_hat = b_dec = 0: the error of an input is ||x||^2
    x = torch.zeros(1000, 4)
    x[:10] = torch.randn(10, 4)  # only these have error
    rs = AnthropicResampler(at=[0.5], window_tokens=1)
    from saeexp.resample.anthropic import resample_features

    pick = resample_features(sae, torch.arange(8), x, generator=torch.Generator().manual_seed(0))
    assert (pick < 10).all()
    assert len(set(pick.tolist())) == 8  # distinct inputs: no two dead features become clones
    assert rs.lr_factor(5) == 1.0  # no resample yet: no re-warm


def test_lr_rewarms_linearly_after_a_resample():
    rs = AnthropicResampler(at=[0.5], rewarm_steps=4)
    rs.last_step = 10
    assert [rs.lr_factor(s) for s in (10, 11, 12, 13, 14, 20)] == [1.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert AnthropicResampler(at=[0.5], rewarm_steps=0).lr_factor(11) == 1.0  # re-warm off


def test_state_round_trips_through_the_state_dict():
    src, sae, opt, batches = _setup()
    rs = AnthropicResampler(at=[0.25, 0.5], window_tokens=256, reservoir_tokens=512)
    module = _Module(sae=sae, total_steps=8, opt=opt)
    for step in range(3):
        x = next(batches)
        rs.observe(module, x, step)
    rs.maybe_resample(module, 2)
    fresh = AnthropicResampler(at=[0.25, 0.5], window_tokens=256, reservoir_tokens=512)
    fresh.load_state_dict(rs.state_dict())
    assert fresh.done == [True, False] and fresh.last_step == 2
    assert (fresh.filled, fresh.pos) == (rs.filled, rs.pos)
    assert torch.equal(fresh.reservoir_ND, rs.reservoir_ND)


def test_gated_encoder_rows_are_found_and_a_missing_one_is_refused():
    from saeexp.errors import ConfigError
    from saeexp.sae import GatedSAE

    sae = GatedSAE(8, 16)
    for name, dim in sae.encoder_rows:
        assert getattr(sae, name).shape[dim] == 16
    AnthropicResampler().validate(sae)
    relu = ReLUSAE(8, 16)
    relu.encoder_rows = (("W_enc", 1), ("b_missing", 0))
    with pytest.raises(ConfigError, match="b_missing"):
        AnthropicResampler().validate(relu)


def _fit(cfg, steps_cb=None):
    """Train a built config for its few steps with Lightning, no logger (the train/step contract, fast)."""
    import lightning as L
    from hydra.utils import instantiate

    from saeexp.build.plan import plan_run
    from saeexp.train.datamodule import ActivationDataModule
    from saeexp.train.module import SAEModule

    p = plan_run(cfg)
    source, sae, penalties, resampler = p.source, p.sae, p.penalties, p.resampler
    batch_size, steps = p.schedule.batch_size, p.schedule.steps
    module = SAEModule(sae, penalties, instantiate(cfg.optimizer), total_steps=steps, log_every=2,
                       dead_window_tokens=cfg.train.dead_window_tokens)
    step_cb = [Resampling(resampler)] if resampler is not None else []
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[*step_cb, *(steps_cb or [])])
    trainer.fit(module, datamodule=ActivationDataModule(source, batch_size, cfg.seed))
    module.resampler = resampler  # what the tests read back
    return module


# pairwise coverage of (model, penalty, resampler, ortho): every pair of values appears in some combination
def _pairwise():
    axes = [MODELS, LOSSES, RESAMPLERS, ["none", "nearest"]]
    todo = {(i, a, j, b) for i, j in itertools.combinations(range(4), 2) for a in axes[i] for b in axes[j]}
    pairs_of = lambda c: {(i, c[i], j, c[j]) for i, j in itertools.combinations(range(4), 2)}  # noqa: E731
    combos, candidates = [], list(itertools.product(*axes))
    while todo:  # greedy: the combination covering most uncovered pairs next
        best = max(candidates, key=lambda c: len(pairs_of(c) & todo))
        combos.append(best)
        todo -= pairs_of(best)
    return combos


COMBOS = _pairwise()
SMALL = ["model.d_sae=32", "train.tokens=2048", "train.batch_size=256", "resampler.at=[0.5]",
         "resampler.window_tokens=256", "resampler.reservoir_tokens=512", "train.dead_window_tokens=256"]


@pytest.mark.parametrize("model,loss,resampler,ortho", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_each_combination_trains_or_is_refused(model, loss, resampler, ortho, tmp_path, one_thread):
    from saeexp.errors import ConfigError

    overrides = [f"model={model}", f"loss={loss}", f"resampler={resampler}", f"ortho={ortho}", *SMALL]
    if resampler != "anthropic":
        overrides = [o for o in overrides if not o.startswith("resampler.")]
    cfg = compose_cfg(overrides, run_dir=tmp_path)
    try:
        module = _fit(cfg)
    except ConfigError as e:
        # refused before any step, with a message naming what to change
        assert "loss" in str(e) or "model" in str(e), str(e)
        return
    assert module.trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in module.sae.parameters())
    if ortho == "nearest":
        assert module.terms[-1].name == "ortho" and module.terms[-1].neighbours_FM.shape[0] == 32


def test_every_model_accepts_the_resampler_with_its_default_penalty(tmp_path, one_thread):
    for model in MODELS:
        cfg = compose_cfg([f"model={model}", "resampler=anthropic", *SMALL], run_dir=tmp_path)
        module = _fit(cfg, [DeadAtStart(8)])
        assert module.resampler.done == [True], model
        assert module.resampler.history and module.resampler.history[0][1] >= 8, (model, module.resampler.history)


def test_refused_combinations_are_refused(tmp_path):
    from saeexp.build.plan import plan_run
    from saeexp.errors import ConfigError

    for overrides in (["model=relu", "loss=none"], ["model=topk", "loss=l1"], ["model=relu", "loss=l0"],
                      ["model=relu", "loss=l1_decoder_norm", "model.decoder_norm=unit"],
                      ["resampler=anthropic", "resampler.at=[1.5]"], ["ortho=nearest", "ortho.pairs=some"]):
        with pytest.raises(ConfigError):
            plan_run(compose_cfg(overrides + ["model.d_sae=32"], run_dir=tmp_path))


def test_lr_is_rewarmed_in_training_after_the_resample(tmp_path, one_thread):
    from lightning.pytorch.callbacks import Callback

    lrs = []

    class Record(Callback):
        def on_train_start(self, trainer, module):
            with torch.no_grad():
                module.sae.b_enc[:8] = -1e3  # features that cannot fire

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    cfg = compose_cfg(["model=relu", *SMALL, "resampler=anthropic", "resampler.rewarm_steps=3"], run_dir=tmp_path)
    module = _fit(cfg, [Record()])
    assert module.resampler.last_step == 3  # the point 0.5 of 8 steps: after the 4th step
    base = lrs[0]
    assert lrs[:4] == [base] * 4
    assert lrs[4:8] == pytest.approx([base / 3, 2 * base / 3, base, base])


class DeadAtStart(Callback):
    """Features [0, n) stop firing from step 0, so resampling has work: their encoder bias (the first 1-D
    parameter the SAE declares in `encoder_rows`) at -1e3."""

    def __init__(self, n: int):
        self.n = n

    def on_train_start(self, trainer, module):
        if trainer.global_step == 0:
            bias = next(n for n, _ in module.sae.encoder_rows if getattr(module.sae, n).ndim == 1)
            with torch.no_grad():
                getattr(module.sae, bias)[:self.n] = -1e3


@pytest.mark.slow  # three end-to-end runs (MLflow included)
def test_resumed_run_resamples_like_an_uninterrupted_one(tmp_path):
    import json

    from conftest import train_cfg
    from safetensors.torch import load_file

    common = ["model=relu", "model.d_sae=128", "train.tokens=30720", "train.batch_size=512",
              "train.checkpoint_every=20",
              "train.log_every=10", "resampler=anthropic", "resampler.at=[0.5,0.75]",
              "resampler.window_tokens=2048", "resampler.reservoir_tokens=2048", "resampler.rewarm_steps=10",
              "loss.l1=0.1", "ortho=active", "ortho.refresh_every=7", "ortho.coef=0.1",
              "+callbacks.dead._target_=test_resample.DeadAtStart", "+callbacks.dead.n=16"]
    train_cfg(compose_cfg(common, run_dir=tmp_path / "full"))
    cut = compose_cfg(common + ["+callbacks.cut._target_=conftest.InterruptAt", "+callbacks.cut.step=27"],
                      run_dir=tmp_path / "cut")
    with pytest.raises(SimulatedCrash):
        train_cfg(cut)
    train_cfg(compose_cfg(common, run_dir=tmp_path / "cut"))  # resumes from step 20 (before the point at 30)
    a = load_file(str(tmp_path / "full/sae/sae.safetensors"))
    b = load_file(str(tmp_path / "cut/sae/sae.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    state = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=False)["callbacks"]["Resampling"]
    assert state["_extra_state"]["done"] == [True, True]
    assert state["_extra_state"]["last_step"] >= 29  # a resample happened after the resume point
    assert (a["b_enc"][:16] > -1e3).all()  # the dead features were resampled (b_enc reset, then trained)
    assert json.loads((tmp_path / "full/metrics.json").read_text())["l0"] > 0
