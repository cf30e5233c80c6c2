"""Console scripts: `saeexp` (train; a Hydra main, so `-m` sweeps and `--cfg job` work) and `saeexp-eval`."""
from __future__ import annotations

import errno
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import saeexp.resolvers  # noqa: F401  (fraction_of, times: the config tree's arithmetic)
from saeexp.errors import ConfigError, StorageError, TrainingDiverged

from saeexp.configtree import conf_dir

CONF_DIR = conf_dir()  # the config tree inside the package (saeexp/configtree.py)


def run_name(override_dirname: str, *, _root_: DictConfig) -> str:
    """A run directory name fixed by the command and the resolved config (never by the clock), so a rerun
    finds it: `model.d_sae=64,loss.l1=2e-3` becomes `loss.l1-2e-3_model.d_sae-64__<config hash>`
    (saeexp.identity: an edited default or another trainer gets another directory).
    """
    from saeexp.identity import run_dir_name
    from saeexp.redact import redact_overrides

    # a secret typed as an override never becomes part of a directory name (issue 11)
    return run_dir_name(redact_overrides(override_dirname), _root_)


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
    from saeexp.guard import discard_created, fail

    discard_created()  # refused before training: no run directory left behind
    fail(e)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _train_main(cfg: DictConfig):
    from saeexp.train.run import train

    try:
        result = train(cfg)
    except (ConfigError, TrainingDiverged, StorageError) as e:
        return _fail(e)
    except OSError as e:  # a disk that filled up or turned read-only mid-run: say which file, keep the rest
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        return _fail(StorageError(f"cannot write {e.filename or 'a file'!r}: {e.strerror}"))
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


def check_renamed(argv: list[str]) -> None:
    """A key or preset that moved fails with one line naming the new one (saeexp.renamed), before Hydra."""
    from saeexp.renamed import check_argv

    try:
        check_argv(argv)
    except ConfigError as e:
        from saeexp.guard import fail

        fail(e)


def main() -> None:
    check_renamed(sys.argv[1:])
    _train_main()


def saved_sae_argv(argv: list[str]) -> list[str]:
    """`saeexp-eval PATH [--out DIR] [overrides]` as Hydra overrides: a leading path is `sae=`, `--out` is `out=`
    (paths need no Hydra quoting)."""
    argv = list(argv)
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        argv[1] = f"sae='{argv[1]}'"
    for i, a in enumerate(argv):
        if a.startswith("--out="):
            argv[i] = f"out='{a[len('--out='):]}'"
        elif a == "--out" and i + 1 < len(argv):
            argv[i:i + 2] = [f"out='{argv[i + 1]}'"]
            break
    return argv


def eval_main() -> None:
    sys.argv = saved_sae_argv(sys.argv)
    _eval_main()
