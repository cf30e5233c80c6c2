"""Trains the cases of tests/test_ddp.py (CASES) under `trainer=ddp` (2 processes, gloo) and saves each rank's
final SAE: `python tests/ddp_worker.py OUT CASE...`. Lightning's launcher re-runs this script for rank 1, and
every `Trainer.fit` after the first reuses the process group, so one launch covers several cases.
tests/test_ddp.py starts it and compares the SAEs with the single-process run's."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from test_ddp import ddp_overrides


def main(out: Path, cases: list[str]) -> None:
    from conftest import compose_cfg

    from saeexp.build.plan import plan_run
    from saeexp.jobs.train import prepare

    torch.set_num_threads(1)
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            plan = plan_run(compose_cfg(ddp_overrides(case, acts=out / "acts.npy"), run_dir=Path(tmp) / "run"))
            # composed outside a Hydra command: Lightning's launcher must re-run this script as it is
            HydraConfig.instance().cfg = None  # type: ignore[assignment]
            ready = prepare(plan)
            trainer = plan.make_trainer(max_steps=plan.schedule.steps, logger=False, callbacks=ready.step_callbacks,
                                        enable_checkpointing=False, enable_progress_bar=False,
                                        enable_model_summary=False, default_root_dir=tmp)
            trainer.fit(ready.module, datamodule=ready.datamodule)
            history = plan.resampler.history if plan.resampler is not None else []
            torch.save({"state": ready.module.state_dict(), "history": history, "steps": trainer.global_step,
                        "scale": ready.module.recipe.input_scale, "world": trainer.world_size},
                       out / f"{case}.rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
