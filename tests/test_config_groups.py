"""Every option of every config group composes and instantiates (found by globbing conf/)."""
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg, expected_refusal
from hydra.utils import instantiate

from saeexp.errors import ConfigError

GROUPS = sorted(p.parent.relative_to(CONF).as_posix() for p in CONF.glob("**/*.yaml") if p.parent != CONF)
# experiments (global diffs of the whole config) compose in tests/test_sweep_presets.py
OPTIONS = sorted({(p.parent.relative_to(CONF).as_posix(), p.stem) for p in CONF.glob("**/*.yaml")
                  if p.parent not in (CONF, CONF / "experiment")})
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _extra(group, option, tmp_path):
    """Values an option needs from the user (a file path), filled with something real."""
    if (group, option) == ("data", "file"):
        import numpy as np

        np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((20000, 8), dtype=np.float32))
        return [f"data.path={tmp_path / 'acts.npy'}", "data.d_in=8"]
    return []


def _build(cfg):
    from saeexp.build.plan import plan_run

    return plan_run(cfg)


def _launcher(option: str):
    """The composed hydra.launcher node of `hydra/launcher=<option>` (Hydra instantiates it under -m)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={option}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # its ${hydra.sweep.dir} resolves as under -m
    return cfg.hydra.launcher


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    if group == "hydra/launcher":
        from hydra.core.plugins import Plugins
        from hydra.plugins.launcher import Launcher

        launcher = _launcher(option)
        # what Hydra does under -m (it instantiates launchers only from the hydra_plugins package: saeexp's are found)
        plugin = Plugins.instance()._instantiate(launcher)
        assert isinstance(plugin, Launcher)
        if option == "packed":
            assert plugin.pack == 0 and plugin.memory_gb is None
            return
        # submitit's (Hydra's scan loads plugin modules afresh: compare by name), one run per task by default
        assert "SlurmLauncher" in {c.__name__ for c in type(plugin).__mro__} and plugin.pack == 1
        # a checkpoint can be written between the USR2 and the time limit; a time-limited job is requeued
        assert 0 < launcher.signal_delay_s < 60 * launcher.timeout_min and launcher.max_num_timeout > 0
        assert Path(launcher.submitit_folder).name == "%j" and launcher.name.startswith("saeexp-")
        return
    extra = _extra(group, option, tmp_path)
    # a model option trains with its own default penalty; a loss option with exactly the models whose declared
    # capabilities allow it; every other option with the default model and with a structural one (topk)
    models = {"model": [option], "loss": MODELS}.get(group, ["relu", "topk"])
    for model in models:
        cfg = compose_cfg([f"model={model}", *([] if group == "model" else [f"{group}={option}"]), *extra,
                           "model.d_sae=64"], run_dir=tmp_path / "r")
        if group == "loss" and expected_refusal(model, option):
            with pytest.raises(ConfigError, match="loss="):
                _build(cfg)
            continue
        p = _build(cfg)
        sae = p.sae
        instantiate(cfg.optimizer)(params=sae.parameters())
        instantiate(cfg.trainer, logger=False) if group == "trainer" and option == "cpu" else None
        assert sae.d_sae == 64


def test_groups_found():
    for g in ("model", "data", "loss", "ortho", "resampler", "optimizer", "trainer", "logger", "paths", "experiment"):
        assert g in GROUPS


def test_every_model_builds_from_compose_without_the_console_script():
    """A notebook composes conf/ with Hydra's compose API and calls `build`/`train` without importing
    saeexp.cli: the tree's resolvers (`${times:...}`, `${fraction_of:...}`) must come with the trainer. In a
    fresh process, since this suite's conftest imports saeexp.cli (bench/speed/bench_variants.py broke on batchtopk's
    `${times:...}` that way)."""
    import subprocess
    import sys

    code = f"""
import sys
from hydra import compose, initialize_config_dir
from saeexp.build.plan import plan_run
for m in {MODELS!r}:
    with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
        plan_run(compose("config", ["model=" + m, "model.d_sae=64"]))
assert "saeexp.cli" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
