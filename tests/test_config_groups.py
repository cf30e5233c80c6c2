"""Every option of every config group composes and instantiates (found by globbing conf/)."""

import pytest
from hydra.utils import instantiate

from conftest import CONF, compose_cfg
from saeexp.errors import ConfigError

GROUPS = sorted(p.parent.relative_to(CONF).as_posix() for p in CONF.glob("**/*.yaml") if p.parent != CONF)
OPTIONS = sorted({(p.parent.relative_to(CONF).as_posix(), p.stem) for p in CONF.glob("**/*.yaml")
                  if p.parent != CONF})
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _extra(group, option, tmp_path):
    """Values an option needs from the user (a file path), filled with something real."""
    if (group, option) == ("data", "file"):
        import numpy as np

        np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((20000, 8), dtype=np.float32))
        return [f"data.path={tmp_path / 'acts.npy'}", "data.d_in=8"]
    return []


def _build(cfg):
    from saeexp.train.run import build

    return build(cfg)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    if group.startswith("hydra/"):
        # launcher options: compose through the multirun path (launchers are instantiated by Hydra itself)
        cfg = compose_cfg([f"{group}={option}"], run_dir=tmp_path / "r")
        assert cfg is not None
        return
    extra = _extra(group, option, tmp_path)
    refusals = []
    # an option may only make sense with some models (e.g. loss=none with topk): one model must accept it
    for model in ([None] + MODELS):
        overrides = [f"{group}={option}", *extra, "model.d_sae=64"] + ([f"model={model}"] if model else [])
        if group == "model":
            overrides = [f"model={option}", *extra, "model.d_sae=64"]
        cfg = compose_cfg(overrides, run_dir=tmp_path / "r")
        try:
            source, sae, penalties, resampler, *_ = _build(cfg)
        except ConfigError as e:
            refusals.append(str(e))
            if group == "model":
                break
            continue
        instantiate(cfg.optimizer)(params=sae.parameters())
        instantiate(cfg.trainer, logger=False) if group == "trainer" and option == "cpu" else None
        assert sae.d_sae == 64
        return
    pytest.fail(f"{group}={option} composes with no model: {refusals}")


def test_groups_found():
    for g in ("model", "data", "loss", "resampler", "optimizer", "trainer", "logger", "paths"):
        assert g in GROUPS
