"""`saeexp`: train one SAE (a Hydra main, so `-m` sweeps and `--cfg job` work)."""
from __future__ import annotations

from omegaconf import DictConfig

from saeexp.build.plan import plan_run
from saeexp.cli.common import command
from saeexp.jobs.train import train
from saeexp.train.preemption import requeue_if_preempted


def _task(cfg: DictConfig) -> dict:
    result = train(plan_run(cfg))
    if result.get("interrupted"):  # preempted under submitit: requeue now (exits); no-op otherwise
        requeue_if_preempted()
    return result


main = command("config", _task)
