"""`train.target_l0`: penalty variants end within 10% of the target held-out L0 at the defaults (the default
synthetic data and budget: 488 steps of 4096 tokens), with the coefficient frozen for the last 10% of the run;
TopK variants get k from it; a budget too short says so at the start, a miss says so at the end."""
from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import compose_cfg, train_cfg
from omegaconf import OmegaConf

from saeexp.build.checks import coefficient_key
from saeexp.build.plan import plan_run
from saeexp.errors import ConfigError
from saeexp.train import target_l0
from saeexp.train.target_l0 import TargetL0

# Held-out L0 at the defaults, seed 0, one thread (README "Training to a target L0" has all twelve): gated at 16
# ended 16.14 and scsae at 8 ended 7.76. Gated is the default model; SCSAE's L0 hardly rises again once it has
# fallen (its bias is not in its output), the case the controller's hold and bounded rate are for.
CASES = [("gated", 16), ("scsae", 8)]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "target"), CASES)
def test_penalty_variants_reach_the_target_l0_at_the_defaults(model, target, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    r = train_cfg(compose_cfg([f"model={model}", f"train.target_l0={target}"], run_dir=run_dir))
    assert abs(r["l0"] / target - 1) < 0.10, f"{model}: held-out L0 {r['l0']:.2f}, target {target}"
    assert "saeexp: warning" not in capsys.readouterr().err  # no short-budget line, no miss, no verdict
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (run_dir / "mlflow_run_id").read_text()
    scale = sorted(client.get_metric_history(run_id, "train/sparsity_scale"), key=lambda m: m.step)
    # the settled coefficient, logged: the configured one times the controller's final factor
    base = compose_cfg([f"model={model}"])
    start = OmegaConf.select(base, coefficient_key(base))
    assert client.get_run(run_id).data.metrics["final/sparsity_coef"] == pytest.approx(r["sparsity_coef"])
    assert r["sparsity_coef"] == pytest.approx(start * scale[-1].value, rel=1e-4)
    freeze = target_l0.freeze_step(r["steps"])
    frozen = [m.value for m in scale if m.step >= freeze]  # the last 10% of the run: a fixed coefficient
    assert len(frozen) >= 2 and max(frozen) == min(frozen)
    assert len({m.value for m in scale if m.step < freeze}) > 5  # and it adapted before


@pytest.mark.parametrize("model", ["topk", "batchtopk"])
def test_target_sets_k_on_topk_variants(model):
    sae = plan_run(compose_cfg([f"model={model}", "model.d_sae=64", "model.k=4", "train.target_l0=12"])).sae
    assert sae.k == 12


def test_bad_target_is_refused():
    for bad in ("-3", "0", "'many'"):
        with pytest.raises(ConfigError, match="train.target_l0"):
            plan_run(compose_cfg(["model.d_sae=64", f"train.target_l0={bad}"]))


def _acts(l0: float, batch: int = 100, width: int = 256):
    """A batch whose mean L0 is l0 (to 1/batch)."""
    acts_BF = torch.zeros(batch * width)
    acts_BF[: round(l0 * batch)] = 1.0
    return acts_BF.view(batch, width)


def test_controller_raises_lambda_at_a_bounded_rate_and_then_holds_it():
    ctl = TargetL0(8, start_step=2, freeze_step=10)
    ctl.observe(_acts(32), step=0)  # L0 32: four times the target, far outside the band
    assert float(ctl.scale()) == 1.0  # still in the sparsity warm-up
    for step in range(2, 10):
        ctl.observe(_acts(32), step)
    # a factor e^RATE per step at most, however far off L0 is: it cannot swing
    assert float(ctl.scale()) == pytest.approx(math.exp(8 * target_l0.RATE))
    held = float(ctl.scale())
    ctl.observe(torch.zeros(4, 32), step=10)  # frozen: even a collapse of L0 changes nothing
    assert float(ctl.scale()) == held
    assert "u" in ctl.state_dict()  # saved in checkpoints: a resume continues it


def test_controller_does_not_push_while_l0_already_falls_toward_the_target():
    """L0 falling 1% a step on its own (JumpReLU's thresholds climbing): lambda stops rising once the trend shows,
    where a constant L0 as far off keeps raising it."""
    falling, flat = TargetL0(8, 0, 1000), TargetL0(8, 0, 1000)
    scales = []
    for step in range(100):
        falling.observe(_acts(64 * 0.99 ** step), step)
        flat.observe(_acts(40), step)
        scales.append(float(falling.scale()))
    assert scales[-1] == scales[50] > 1.0  # held from the time the trend was seen
    assert float(flat.scale()) == pytest.approx(math.exp(100 * target_l0.RATE))


def test_a_budget_too_short_for_the_controller_is_said_at_the_start():
    def warning(target, control, total_steps, sparsity_warmup_steps):
        return target_l0.budget_warning(target_l0.controller(target, control, total_steps, sparsity_warmup_steps),
                                        total_steps)

    assert warning(16, "coefficient", total_steps=488, sparsity_warmup_steps=24) is None
    line = warning(16, "coefficient", total_steps=100, sparsity_warmup_steps=5)
    assert line.startswith("saeexp: warning: train.target_l0=16 gets 85 steps") and "train.tokens" in line
    assert warning(16, "k", total_steps=100, sparsity_warmup_steps=5) is None
    assert warning(None, "coefficient", total_steps=100, sparsity_warmup_steps=5) is None


def test_a_missed_target_is_said_at_the_end():
    def ctl(target, control="coefficient"):
        return target_l0.controller(target, control, total_steps=488, sparsity_warmup_steps=24)

    assert target_l0.miss_warning(ctl(16), 15.0) is None
    assert target_l0.miss_warning(ctl(16), 18.2) is None  # 14% over: within MISS
    assert "over" in target_l0.miss_warning(ctl(16), 19.0)  # 19% over
    line = target_l0.miss_warning(ctl(32), 11.73)
    assert line.startswith("saeexp: warning: train.target_l0=32 ended at held-out L0 11.7, 63% under")
    assert target_l0.miss_warning(ctl(32, "k"), 11.73) is None and target_l0.miss_warning(ctl(None), 3) is None
