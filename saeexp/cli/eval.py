"""`saeexp-eval PATH [--out DIR] [data=...]`: score a saved SAE (saeexp run or SAELens folder) on held-out data."""
from __future__ import annotations

from omegaconf import DictConfig

from saeexp.build.saved import plan_saved
from saeexp.cli.common import command
from saeexp.jobs.evaluate import evaluate_saved


def saved_sae_argv(argv: list[str]) -> list[str]:
    """`PROG PATH [--out DIR] [overrides]` as Hydra overrides: a leading path is `sae=`, `--out` is `out=`
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


def _task(cfg: DictConfig) -> dict:
    return evaluate_saved(plan_saved(cfg))


main = command("eval", _task, argv_rewrite=saved_sae_argv)
