"""Shared fixtures: every test writes runs, caches and MLflow stores under its own temp dirs."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from saeexp.configtree import CONF_DIR as CONF  # the tree the installed package uses

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _repo_root_stays_clean():
    """Runs, caches and MLflow stores never land in the repository (MLflow's default is ./mlruns)."""
    before = {p.name for p in ROOT.iterdir()}
    yield
    new = {p.name for p in ROOT.iterdir()} - before
    assert not new & {"mlruns", "runs", "mlflow.db", "outputs", "multirun"}, f"the suite wrote {new} into the repo"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Nothing lands in the repo or the user's home: runs, caches and MLflow all under tmp_path."""
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("SAEEXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    yield


@pytest.fixture(scope="session")
def lm_cache(tmp_path_factory):
    """One cache for the real LM tests of a session: the model is dequantised into it once, not per module."""
    return tmp_path_factory.mktemp("lm_cache")


@pytest.fixture
def one_thread():
    """Tiny matrices: one torch thread is many times faster than two on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def compose_cfg(overrides=(), config_name="config", run_dir=None):
    """Compose the real config tree (with Hydra's runtime fields filled) the way the CLI would."""
    from omegaconf import OmegaConf, open_dict

    import saeexp.build.resolvers  # noqa: F401  (registers the run_name resolver)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if run_dir is not None:
            cfg.paths.run_dir = str(run_dir)
    OmegaConf.resolve(cfg)  # freeze ${hydra:...} while HydraConfig is set
    return cfg


def expected_refusal(model: str, loss: str) -> bool:
    """Whether `model=<model> loss=<loss>` must be refused, derived from the SAE's declared capabilities
    (saeexp/sae/base.py) and the penalty the loss config instantiates: no hand-kept list of pairs."""
    from hydra.utils import get_class

    from saeexp.losses import L0

    cfg = compose_cfg([f"model={model}", f"loss={loss}"])
    sae_cls = get_class(cfg.model._target_)
    if not cfg.loss.get("_target_"):
        return sae_cls.sparsity == "penalty"  # no penalty: only structural sparsity trains
    if sae_cls.sparsity == "structure":
        return True
    return issubclass(get_class(cfg.loss._target_), L0) and not sae_cls.provides_l0


@pytest.fixture
def compose_config():
    return compose_cfg


class SimulatedCrash(RuntimeError):
    pass


class InterruptAt:
    """A Lightning callback that crashes training after `step` optimiser steps (as a kill would)."""

    def __new__(cls, step: int):
        from lightning.pytorch.callbacks import Callback

        class _Interrupt(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == step:
                    raise SimulatedCrash(f"crashed at step {step}")

        return _Interrupt()


class PoisonAt:
    """A Lightning callback that makes the weights NaN after `step` steps (a divergence, on demand)."""

    def __new__(cls, step: int):
        import torch
        from lightning.pytorch.callbacks import Callback

        class _Poison(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == step:
                    with torch.no_grad():
                        module.sae.W_dec[0, 0] = float("nan")  # every variant has W_dec

        return _Poison()


class WaitForFile:
    """A Lightning callback that holds training at its start until `path` exists (a test opens the gate)."""

    def __new__(cls, path: str, timeout_s: float = 300.0):
        import time
        from pathlib import Path

        from lightning.pytorch.callbacks import Callback

        class _Gate(Callback):
            def on_train_start(self, trainer, module):
                t0 = time.monotonic()
                while not Path(path).exists() and time.monotonic() - t0 < timeout_s:
                    time.sleep(0.1)

        return _Gate()


def train_cfg(cfg) -> dict:
    """What `saeexp` does with a composed config: plan it, then train the plan."""
    from saeexp.build.plan import plan_run
    from saeexp.jobs.train import train

    return train(plan_run(cfg))
