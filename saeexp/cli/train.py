"""`saeexp`: train one SAE (a Hydra main, so `-m` sweeps and `--cfg job` work)."""
from __future__ import annotations

from omegaconf import DictConfig

from saeexp.build.plan import plan_run
from saeexp.cli.common import command, note_coefficient
from saeexp.jobs.pack import train_pack
from saeexp.jobs.train import train
from saeexp.train.pack import is_member_checkpoint
from saeexp.train.preemption import requeue_if_preempted


def _task(cfg: DictConfig) -> dict:
    plan = plan_run(cfg)
    note_coefficient(cfg)
    if plan.run_dir is not None and is_member_checkpoint(plan.run_dir / "checkpoints" / "last.ckpt"):
        # started in a packed sweep (hydra/launcher=packed): resumed as a pack of one, with the same result
        result = train_pack([plan])[0]
        if isinstance(result, BaseException):
            raise result
        return result
    result = train(plan)
    if result.get("interrupted"):  # preempted under submitit: requeue now (exits); no-op otherwise
        requeue_if_preempted()
    return result


main = command("config", _task)
