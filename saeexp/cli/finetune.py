"""`saeexp-finetune PATH method=decoder [data=...]`: reference 003's fine-tuning of a saved SAE."""
from __future__ import annotations

from omegaconf import DictConfig

from saeexp.build.saved import plan_finetune
from saeexp.cli.common import command
from saeexp.cli.eval import saved_sae_argv
from saeexp.jobs.finetune import finetune_saved


def _task(cfg: DictConfig) -> dict:
    return finetune_saved(plan_finetune(cfg))


main = command("finetune", _task, argv_rewrite=saved_sae_argv)
