"""`saeexp-yardstick experiment=demo`: the rank-64 PCA reconstruction an SAE should beat, on the same data."""
from __future__ import annotations

from omegaconf import DictConfig

from saeexp.build.saved import plan_yardstick
from saeexp.cli.common import command
from saeexp.jobs.yardstick import yardstick

# no run directory, no outputs: the yardstick only reads the data config
QUIET = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def _task(cfg: DictConfig) -> dict:
    return yardstick(plan_yardstick(cfg))


main = command("config", _task, argv_rewrite=lambda argv: [*argv, *QUIET])
