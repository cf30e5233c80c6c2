"""Console scripts: `saeexp` (train; a Hydra main, so `-m` sweeps and `--cfg job` work) and `saeexp-eval`."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from saeexp.errors import ConfigError, TrainingDiverged

# the config tree lives at the project's top level (`conf/`), next to the package
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run_name(override_dirname: str, *, _root_: DictConfig) -> str:
    """A run directory name fixed by the command and the resolved config (never by the clock), so a rerun
    finds it: `model.d_sae=64,loss.l1=2e-3` becomes `loss.l1-2e-3_model.d_sae-64__<config hash>`
    (saeexp.identity: an edited default or another trainer gets another directory).
    """
    from saeexp.identity import run_dir_name

    return run_dir_name(override_dirname, _root_)


OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def _fail(e: Exception) -> None:
    """One line on stderr, exit 2; under `-m` re-raise so the launcher records this job as failed."""
    from hydra.core.hydra_config import HydraConfig

    try:
        multirun = HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        multirun = False
    if multirun:
        raise e
    print(f"saeexp: error: {e}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _train_main(cfg: DictConfig):
    from saeexp.train.run import train

    try:
        result = train(cfg)
    except (ConfigError, TrainingDiverged) as e:
        return _fail(e)
    if result.get("interrupted"):  # preempted under submitit: requeue now (exits); no-op otherwise
        from saeexp.sweep.preemption import requeue_if_preempted

        requeue_if_preempted()
    return result


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _eval_main(cfg: DictConfig):
    from saeexp.evaluate import evaluate_saved

    try:
        return evaluate_saved(cfg)
    except ConfigError as e:
        _fail(e)


def main() -> None:
    _train_main()


def eval_main() -> None:
    # `saeexp-eval PATH [overrides]`: a leading path is the SAE to score (paths need no Hydra quoting)
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"sae='{sys.argv[1]}'"
    _eval_main()
