"""`saeexp data=lm` with nothing else (issue 26): conf/data_defaults/lm.yaml gives a language model its own width,
budget and a target L0 instead of the synthetic data's coefficient; experiments and the command line override it.
The real run's figures (SmolLM2, L0, CE loss recovered against the PCA yardstick) are in README "The main job"."""
from __future__ import annotations

from conftest import compose_cfg

from saeexp.build.checks import coefficient_note
from saeexp.train import target_l0


def test_data_lm_trains_one_pass_of_its_harvest_to_a_target_l0_with_room_for_the_controller():
    cfg = compose_cfg(["data=lm"])
    assert cfg.model._target_.endswith("GatedSAE")  # the default model, as on the synthetic data
    assert cfg.model.d_sae == 8 * cfg.data.d_in == 4608
    assert cfg.data.harvest_tokens == cfg.train.tokens == 1_000_000  # one pass: nothing cycles
    assert cfg.train.target_l0 == 16
    assert cfg.loss.l1 == 2e-3  # the controller starts at the demo's coefficient, not the synthetic data's 4e-2
    assert compose_cfg(["data=lm", "model=jumprelu"]).loss.l0 == compose_cfg(["model=jumprelu"]).loss.l0
    steps = cfg.train.tokens // cfg.train.batch_size
    warmup = cfg.train.sparsity_warmup_tokens // cfg.train.batch_size
    ctl = target_l0.controller(16, "coefficient", steps, warmup)
    assert target_l0.budget_warning(ctl, steps) is None  # no short-budget line


def test_the_synthetic_defaults_and_the_experiments_keep_their_own():
    synthetic = compose_cfg([])
    assert synthetic.train.target_l0 is None and synthetic.model.d_sae == 16 * synthetic.data.d_in
    demo = compose_cfg(["experiment=demo"])  # the README's main job: a fixed coefficient
    assert demo.train.target_l0 is None and demo.loss.l1 == 2e-3
    # another variant on the demo keeps its own penalty (the demo set loss.l1, and jumprelu's L0 penalty has none:
    # `saeexp experiment=demo model=jumprelu` failed with Hydra's TypeError)
    jump = compose_cfg(["experiment=demo", "model=jumprelu"])
    assert jump.loss._target_ == "saeexp.losses.L0" and jump.loss.l0 == compose_cfg(["model=jumprelu"]).loss.l0
    from hydra.utils import instantiate

    instantiate(jump.loss)
    grid = compose_cfg(["experiment=relu_grid", "data=lm"])  # a coefficient grid stays a grid on an LM
    assert grid.train.target_l0 is None
    assert compose_cfg(["data=lm", "train.target_l0=null", "model.d_sae=1024"]).train.target_l0 is None


def test_a_coefficient_given_under_the_default_target_is_said_once():
    cfg = compose_cfg(["data=lm", "loss.l1=3e-3"])
    note = coefficient_note(cfg, ["data=lm", "loss.l1=3e-3"])
    assert note.startswith("saeexp: note: loss.l1=0.003 is where train.target_l0=16") and "train.target_l0=null" in note
    assert coefficient_note(cfg, ["data=lm", "loss.l1=3e-3", "train.target_l0=16"]) is None  # both asked for
    assert coefficient_note(compose_cfg(["data=lm"]), ["data=lm"]) is None
    assert coefficient_note(compose_cfg(["loss.l1=3e-3"]), ["loss.l1=3e-3"]) is None  # no target: no note
