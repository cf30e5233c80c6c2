"""The run the CLI makes (config -> built objects -> Lightning's loop) against a reference training loop written
out here, in the same process: 50 steps of every variant with sparsity warm-up, input scaling, LR decay,
gradient clipping, the target-L0 controller and one resampling event.

Why in-process and in float64: a file of float32 weights written on one machine is not what another CPU computes
(50 float32 steps with a resampling event round differently under AVX-512, AVX2 or the default kernels). Here
both sides run on the same machine, in float64 (Lightning's `64-true`), so what they may differ by is float64
rounding grown over the steps, and the tolerance is measured, not guessed: the reference is run a second time
from initial weights moved by a relative 1e-13 (a few hundred float64 ulps), and the distance that perturbation
grows to bounds what rounding can do. A real change to the step (a schedule off by a step, a term weighted
differently, a hook in the wrong order) moves the weights by orders of magnitude more.

The reference builds every object from constructor arguments written out below (not from the config), and runs
its own loop: schedules, the order of the hooks around the optimiser step, clipping, resampling and its LR
re-warm. It shares with the code under test only the SAE, loss-term, controller and resampler classes, whose
math other tests check by hand (tests/test_variants.py, test_resample.py, test_ortho.py, test_target_l0.py).
This is the equivalence test a refactor of the trainer keeps green.
"""
from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from conftest import CONF, compose_cfg

D, F, BATCH, STEPS, LR = 16, 256, 128, 50, 2e-2
WARM = 10                  # sparsity warm-up, steps
DECAY = STEPS * 2 // 10    # LR decay over the last 20% (train.lr_decay_tokens' default)
CLIP = 1.0                 # train.grad_clip, on the loss summed over d_in
DEAD = 2 * BATCH           # the dead window, tokens
COMMON = [f"data.d_in={D}", "data.n_features=48", "data.groups=8", "data.heldout_tokens=256", "data.max_p=0.05",
          f"model.d_sae={F}", f"train.batch_size={BATCH}", f"train.tokens={BATCH * STEPS}",
          f"train.sparsity_warmup_tokens={BATCH * WARM}", "train.init_sample_tokens=1024",
          f"train.dead_window_tokens={DEAD}", "train.log_every=10", "train.b_dec_init=zeros",
          "resampler=anthropic", "resampler.at=[0.5]", f"resampler.window_tokens={DEAD}",
          "resampler.rewarm_steps=10", "resampler.reservoir_tokens=1024", "resampler.reservoir_steps=8",
          f"optimizer.lr={LR}", "trainer.precision=64-true"]


def _l1():
    from saeexp.losses import L1

    return [L1(1.0)]


# case -> (config overrides, reference: SAE class path, its constructor arguments, the loss terms, target L0)
CASES = {
    "relu": (["model=relu", "loss.l1=1"], "saeexp.sae.ReLUSAE", {"decoder_norm": "unit"}, _l1, None),
    "gated": (["model=gated", "loss.l1=1"], "saeexp.sae.GatedSAE",
              {"decoder_norm": "unit", "aux_recon": 1.0, "free_decoder": "unfrozen_in_aux"}, _l1, None),
    "jumprelu": (["model=jumprelu", "loss.l0=1", "model.init_threshold=1"], "saeexp.sae.JumpReLUSAE",
                 {"decoder_norm": "free", "init_threshold": 1.0, "bandwidth": None, "kernel": "rectangle",
                  "threshold_param": "raw", "threshold_lr_scale": 1.0, "pre_act": 0.0, "dead_window_tokens": 50_000},
                 lambda: [__import__("saeexp.losses", fromlist=["L0"]).L0(1.0)], None),
    "topk": (["model=topk", "model.k=4", f"model.dead_window_tokens={DEAD}"], "saeexp.sae.TopKSAE",
             {"decoder_norm": "unit", "k": 4, "auxk": 1 / 32, "k_aux": None, "dead_window_tokens": DEAD,
              "dead_window_batches": None},
             list, None),
    "batchtopk": (["model=batchtopk", "model.k=4", f"model.dead_window_tokens={DEAD}", "model.dead_window_batches=null"],
                  "saeexp.sae.BatchTopKSAE",
                  {"decoder_norm": "unit", "k": 4, "threshold_momentum": 0.99, "auxk": 1 / 32, "k_aux": None,
                   "dead_window_tokens": DEAD, "dead_window_batches": None}, list, None),
    "scsae": (["model=scsae", "loss.l1=1"], "saeexp.sae.SCSAE", {"decoder_norm": "unit"}, _l1, None),
    "relu+l1_decoder_norm": (["model=relu", "loss=l1_decoder_norm", "loss.l1=1"], "saeexp.sae.ReLUSAE",
                             {"decoder_norm": "free"},
                             lambda: [__import__("saeexp.losses", fromlist=["L1DecoderNorm"]).L1DecoderNorm(1.0)],
                             None),
    "relu+ortho": (["model=relu", "loss.l1=1", "ortho=nearest", "ortho.refresh_every=7", "ortho.coef=0.1"], "saeexp.sae.ReLUSAE", {"decoder_norm": "unit"},
                   lambda: _l1() + [__import__("saeexp.losses.ortho", fromlist=["x"]).DecoderOrthogonality(
                       coef=0.1, pairs="nearest", features="all", similarity="abs", margin=0.0, neighbours=8,
                       refresh_every=7, rerank_every=10)], None),
    "relu+target_l0": (["model=relu", "loss.l1=1", "train.target_l0=8"], "saeexp.sae.ReLUSAE",
                       {"decoder_norm": "unit"}, _l1, 8.0),
}


def test_every_model_config_has_a_reference_case():
    models = {p.stem for p in (CONF / "model").glob("*.yaml")}
    assert models <= set(CASES), f"add the reference of {sorted(models - set(CASES))} to CASES"


# --- the run under test: what `saeexp` builds from the config, trained by Lightning ----------------------------
def lightning_run(case: str, tmp_path):
    from saeexp.build.plan import plan_run
    from saeexp.jobs.train import prepare

    plan = plan_run(compose_cfg([*CASES[case][0], *COMMON], run_dir=tmp_path / "run"))
    ready = prepare(plan)
    assert plan.schedule.steps == STEPS
    initial = copy.deepcopy(plan.sae.state_dict())
    trainer = plan.make_trainer(max_steps=STEPS, logger=False, callbacks=ready.step_callbacks,
                                enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(ready.module, datamodule=ready.datamodule)
    assert trainer.global_step == STEPS and plan.sae.W_dec.dtype == torch.float64
    return initial, plan.sae, ready.input_scale, plan.resampler.history


# --- the reference ---------------------------------------------------------------------------------------------
def reference_source():
    from saeexp.data.synthetic import SyntheticSource

    return SyntheticSource(d_in=D, n_features=48, max_p=0.05, alpha=0.5, magnitude="exponential",
                           mean_magnitude=1.0, min_magnitude=0.5, noise=0.02, groups=8, group_size=2, group_p=0.005,
                           heldout_tokens=256, seed=0)


def reference_init(case: str):
    """(SAE initialised from a data sample in float32, input scale), from constructor arguments."""
    from hydra.utils import get_class

    from saeexp.train import init

    _, target, kwargs, _, _ = CASES[case]
    torch.manual_seed(0)  # as Lightning's seed_everything(0) before building
    sae = get_class(target)(d_in=D, d_sae=F, seed=0, **kwargs)
    sample = reference_source().sample(1024, seed=0)
    scale = init.input_scale(sample)
    with torch.no_grad():
        sae.b_dec.zero_()
    init.fit_encoder_scale(sae, sample * scale)
    return sae, scale


def reference_run(case: str, sae, scale: float):
    """50 steps in float64, written out: the loop, the schedules and the hooks around the optimiser step."""
    from saeexp.resample.anthropic import AnthropicResampler
    from saeexp.train.target_l0 import TargetL0

    sae = sae.double()
    terms = CASES[case][3]()
    target = CASES[case][4]
    ctl = TargetL0(target, start_step=WARM, freeze_step=STEPS - math.ceil(0.1 * STEPS)).double() \
        if target else None
    groups = sae.param_groups()
    opt = torch.optim.Adam([{"params": g["params"], "lr": LR * g.get("lr_scale", 1.0)} for g in groups],
                           lr=LR, betas=(0.9, 0.999), foreach=False)
    base = [g["lr"] for g in opt.param_groups]
    resampler = AnthropicResampler(at=[0.5], window_tokens=DEAD, rewarm_steps=10, enc_scale=0.2,
                                   reservoir_tokens=1024, reservoir_steps=8, seed=0)
    shim = types.SimpleNamespace(sae=sae, total_steps=STEPS, optimizers=lambda: opt)
    batches = reference_source().batches(BATCH, seed=0, start=0)
    for s in range(STEPS):
        lr_factor = min(1.0, max(0.0, (STEPS - s) / DECAY)) * resampler.lr_factor(s)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * lr_factor
        x = next(batches).double() * scale
        out = sae(x)
        factor = min(1.0, (s + 1) / WARM) * (ctl.u.exp() if ctl is not None else 1.0)
        loss = (out.x_hat_BD - x).pow(2).mean()
        for t in terms:
            loss = loss + t(x, out, sae) * (factor if t.is_sparsity else 1.0)
        for v in out.aux_losses.values():
            loss = loss + v
        if ctl is not None:
            ctl.observe(out.acts_BF, s)
        sae.update_firing(out.acts_BF.detach().amax(dim=0) > 0, x.shape[0])  # fired on some token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            if sae.decoder_norm == "unit":  # only the tangential part of each row's gradient
                W, G = sae.W_dec, sae.W_dec.grad
                G -= (G * W).sum(dim=1, keepdim=True) * W
            grads = [p.grad for p in sae.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            coef = min(1.0, float((CLIP / D) / (norm + 1e-6)))
            for g in grads:
                g.mul_(coef)
        opt.step()
        with torch.no_grad():
            if sae.decoder_norm == "unit":
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        resampler.observe(shim, x, s)
        resampler.maybe_resample(shim, s)
    return sae, resampler.history


def _perturbed(sae, rel: float):
    out = copy.deepcopy(sae)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_lightning_run_equals_the_reference_loop(case, tmp_path, one_thread):
    initial, got, scale, history = lightning_run(case, tmp_path)
    ref_init, ref_scale = reference_init(case)
    # built from the config = built from the constructor arguments (same process: exactly)
    assert scale == ref_scale
    for name, t in ref_init.state_dict().items():
        assert torch.equal(initial[name], t), f"{case}: {name} is initialised differently from the config"

    want, ref_history = reference_run(case, copy.deepcopy(ref_init), ref_scale)
    moved, _ = reference_run(case, _perturbed(ref_init, 1e-13), ref_scale)
    assert history and history[0][1] > 0, f"{case}: nothing was resampled, so the resampling event is not covered"
    assert [tuple(h) for h in history] == [tuple(h) for h in ref_history]
    for name, w in want.state_dict().items():
        if not torch.is_floating_point(w):
            assert torch.equal(got.state_dict()[name], w), f"{case}: {name}"
            continue
        # how far rounding-sized differences grow over these 50 steps, measured on this machine
        growth = (moved.state_dict()[name] - w).abs().max().item()
        tol = 100 * growth + 1e-12 * w.abs().max().item()
        diff = (got.state_dict()[name] - w).abs().max().item()
        assert diff <= tol, f"{case}: {name} differs from the reference by {diff:.3g} (rounding allows {tol:.3g})"
        # and the test can tell: the weights moved during training far more than the tolerance
        assert (w - initial[name].double()).abs().max().item() > 1e3 * tol or w.numel() == 1, f"{case}: {name}"
