"""`train.target_l0`: penalty variants end within 10% of the target held-out L0 on average over two seeds (each
seed within 15%: the controller's path is chaotic, and other CPUs' kernels round it elsewhere), with the
coefficient frozen for the last 20% of the run; TopK variants get k from it."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import compose_cfg, train_cfg
from omegaconf import OmegaConf

from saeexp.build.checks import coefficient_key
from saeexp.build.plan import plan_run
from saeexp.errors import ConfigError
from saeexp.train.target_l0 import TargetL0

TARGET = 16
# every hyperparameter the outcome depends on, pinned (defaults may move): the synthetic data, the width,
# a short run at a high LR (the controller needs a few hundred steps), LR decay over the last 20%
SETUP = ["data.d_in=32", "data.n_features=128", "data.max_p=0.05", "data.alpha=0.5", "data.magnitude=exponential",
         "data.mean_magnitude=1.0", "data.min_magnitude=0.0", "data.noise=0.0", "data.groups=0", "data.heldout_tokens=8192",
         "model.d_sae=128", "optimizer.lr=4e-3", "train.batch_size=512", "train.tokens=204800",
         "train.lr_decay_tokens=40960", "train.lr_warmup_tokens=0", "train.sparsity_warmup_tokens=0",
         "train.init_sample_tokens=4096", "train.log_every=20", f"train.target_l0={TARGET}", "name=target"]


# JumpReLU's L0 follows lambda only as fast as theta moves: at its default (theta at the configured lr, SAELens')
# this 400-step run ends at L0 13.6 / 14.7 for the two seeds (15% low), and at twice the steps 8.7 / 8.4, the
# controller's integral running ahead of theta (README "Training to a target L0"). The test pins theta's
# lr at sqrt(d_in) x lr (the default before gradient clipping): 16.2 / 16.0.
PER_MODEL = {"jumprelu": ["model.threshold_lr_scale=5.66"]}


@pytest.mark.parametrize("model", ["relu", "gated", "jumprelu", "scsae"])
def test_penalty_variants_reach_the_target_l0(model, tmp_path, one_thread):
    from mlflow.tracking import MlflowClient

    l0s = []
    for seed in (0, 1):
        run_dir = tmp_path / f"seed{seed}"
        r = train_cfg(compose_cfg([f"model={model}", f"seed={seed}", *SETUP, *PER_MODEL.get(model, [])], run_dir=run_dir))
        l0s.append(r["l0"])
        assert abs(r["l0"] / TARGET - 1) < 0.15, f"{model} seed {seed}: held-out L0 {r['l0']:.2f}, target {TARGET}"
    # one seed's end point moves with the CPU's rounding (scsae seed 0 ended at 17.8 with ATEN_CPU_CAPABILITY=default,
    # MKL SSE4_2 and one thread); the mean of the two is what the README promises
    assert abs(sum(l0s) / len(l0s) / TARGET - 1) < 0.10, f"{model}: held-out L0 {l0s}, target {TARGET}"
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (run_dir / "mlflow_run_id").read_text()
    scale = sorted(client.get_metric_history(run_id, "train/sparsity_scale"), key=lambda m: m.step)
    # the settled coefficient, logged: the configured one times the controller's final factor
    cfg = compose_cfg([f"model={model}", *SETUP])
    start = OmegaConf.select(cfg, coefficient_key(cfg))  # loss.l1, or loss.l0 for jumprelu
    assert client.get_run(run_id).data.metrics["final/sparsity_coef"] == pytest.approx(r["sparsity_coef"])
    assert r["sparsity_coef"] == pytest.approx(start * scale[-1].value, rel=1e-4)
    frozen = [m.value for m in scale if m.step >= 320]  # the last 20% of 400 steps: a fixed coefficient
    assert len(frozen) >= 4 and max(frozen) == min(frozen)
    assert len({m.value for m in scale if m.step < 320}) > 5  # and it adapted before


@pytest.mark.parametrize("model", ["topk", "batchtopk"])
def test_target_sets_k_on_topk_variants(model):
    sae = plan_run(compose_cfg([f"model={model}", "model.d_sae=64", "model.k=4", "train.target_l0=12"])).sae
    assert sae.k == 12


def test_bad_target_is_refused():
    for bad in ("-3", "0", "'many'"):
        with pytest.raises(ConfigError, match="train.target_l0"):
            plan_run(compose_cfg(["model.d_sae=64", f"train.target_l0={bad}"]))


def test_controller_raises_lambda_while_l0_is_high_and_then_holds_it():
    ctl = TargetL0(8, start_step=2, freeze_step=10)
    dense_BF = torch.ones(4, 32)  # L0 32: four times the target
    ctl.observe(dense_BF, step=0)
    assert float(ctl.scale()) == 1.0  # still in the sparsity warm-up
    for step in range(2, 9):
        before = float(ctl.scale())
        ctl.observe(dense_BF, step)
        assert float(ctl.scale()) > before
    ctl.observe(dense_BF, step=9)  # the last adaptive step settles on the integral (no proportional kick)
    held = float(ctl.scale())
    assert held == pytest.approx(float(ctl.integral.exp())) and held > 1.0
    ctl.observe(torch.zeros(4, 32), step=10)  # frozen: even a collapse of L0 changes nothing
    assert float(ctl.scale()) == held
    assert set(ctl.state_dict()) >= {"u", "integral"}  # saved in checkpoints: a resume continues it
