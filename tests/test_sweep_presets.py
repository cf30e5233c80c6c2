"""Every experiment of conf/experiment/ composes; every sweep preset among them with every value of every axis; the
SLURM launcher's keys override."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import saeexp.build.resolvers  # noqa: F401  (the tree's ${times:...}: this module alone must compose the presets)
from saeexp.configtree import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
PRESETS = [e for e in EXPERIMENTS if "sweeper" in (Path(CONF_DIR) / "experiment" / f"{e}.yaml").read_text()]


def _compose(name: str, overrides=()):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", [f"experiment={name}", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_a_diff_of_the_main_config(name, monkeypatch, tmp_path):
    """An experiment changes the main config (its own name, and values) and a command line still wins over it."""
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = compose("config", [])
    cfg = _compose(name)
    assert cfg.name != base.name and cfg.hydra.runtime.choices.experiment == name
    assert _compose(name, ["name=mine", "seed=7"]).name == "mine"
    assert _compose(name, ["seed=7"]).seed == 7


def test_the_demo_is_an_experiment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    cfg = _compose("demo")
    assert (cfg.name, cfg.data._target_.rsplit(".", 1)[-1], cfg.model.d_sae) == ("demo", "LMSource", 4608)


def _axes(cfg) -> dict[str, list[str]]:
    parser = OverridesParser.create()
    params = cfg.hydra.sweeper.params or {}
    axes = {}
    for k, v in params.items():
        o = parser.parse_override(f"{k}={v}")
        axes[k] = [str(x) for x in o.sweep_string_iterator()] if o.is_sweep_override() else [str(v)]
    return axes


def test_there_are_presets():
    assert {"relu_grid", "variants_matched"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_every_axis_value(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    cfg = _compose(name)
    axes = _axes(cfg)
    assert cfg.name.startswith("sweep_"), "a preset sweeps at least two axes, by name"
    assert math_prod(len(v) for v in axes.values()) >= 4 and sum(len(v) > 1 for v in axes.values()) >= 2
    for key, values in axes.items():
        for value in values:
            c = _compose(name, [f"{key}={value}"])
            model = OmegaConf.to_container(c.model, resolve=True)
            assert model["_target_"].startswith("saeexp.") and model["d_sae"] > 0
            assert c.train.tokens == cfg.train.tokens  # an equal token budget across the sweep


@pytest.mark.parametrize("name", PRESETS)
def test_preset_on_slurm_with_overrides(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    c = _compose(name, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=4",
                        "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=16", "hydra.launcher.gpus_per_node=2",
                        "hydra.launcher.cpus_per_task=4"])
    launcher = c.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.array_parallelism, launcher.timeout_min, launcher.mem_gb,
            launcher.gpus_per_node, launcher.cpus_per_task) == ("gpu", 4, 30, 16, 2, 4)
    # a time-limited job is requeued: submitit sends the same USR2 signal_delay_s before the limit, whose
    # checkpoint-requeue-resume path tests/test_slurm.py proves with a USR2; a real time limit is not waited for
    assert launcher.max_num_timeout > 0
    assert c.callbacks.preemption._target_.endswith("PreemptionCheckpoint")
    assert c.hydra.callbacks.sweep._target_.endswith("SweepSetup")


def math_prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


def test_every_launcher_config_composes(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    for path in sorted((Path(CONF_DIR) / "hydra" / "launcher").glob("*.yaml")):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            c = compose("config", [f"hydra/launcher={path.stem}"], return_hydra_config=True)
        if path.stem == "packed":  # this process: no SLURM keys
            assert c.hydra.launcher.pack == 0 and c.hydra.launcher.memory_gb is None
            continue
        assert OmegaConf.to_container(c.hydra.launcher)["submitit_folder"].endswith("%j")
        assert any("OMP_NUM_THREADS" in line for line in c.hydra.launcher.setup)  # threads follow the job's CPUs
