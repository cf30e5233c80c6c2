"""The resolvers the config tree uses, registered on import (by the entry layer and by saeexp.build, so a
notebook that composes conf/ with Hydra's compose API and calls `saeexp.build.plan_run` has them too)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from saeexp.build.identity import run_dir_name


def run_name(task_overrides, *, _root_: DictConfig) -> str:
    """A run directory name fixed by the command and the resolved config (never by the clock), so a rerun finds
    it: `model.d_sae=64 loss.l1=2e-3` becomes `loss.l1-2e-3_model.d_sae-64__<config hash>`."""
    return run_dir_name(task_overrides, _root_)


# `${fraction_of:${train.tokens},0.2}`: a share of the run in tokens, so schedules follow train.tokens
OmegaConf.register_new_resolver("fraction_of", lambda total, share: int(int(total) * float(share)), replace=True)
# `${times:${data.d_in},16}`: a multiple of another key (a width as an expansion factor)
OmegaConf.register_new_resolver("times", lambda n, factor: int(int(n) * float(factor)), replace=True)
# `${run_name:${hydra:overrides.task}}`: the run directory's name (saeexp.build.identity)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
