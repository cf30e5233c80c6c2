"""`trainer=ddp`: one SAE trained by 2 processes (Lightning's DDP over gloo, on CPU) equals the one-process SAE.

Each rank steps on its half of every global batch; the firing counts (dead latents, AuxK, resampling), the L0
the target-L0 controller sees, BatchTopK's batch-level threshold, AuxK's ratio, the resampler's reservoir and
the logged values are global (saeexp/util/ranks.py). So the two SAEs may differ only by float rounding: the
gradient of a half batch summed over the ranks rounds differently from the whole batch's.

The tolerance is measured, as in tests/test_step_equivalence.py: everything in float64 (`64-true`), and the
one-process run repeated from initial weights moved by a relative 1e-13 (a few hundred ulps, far above the
rounding DDP adds per step); the distance that perturbation grows to over the same steps, times 100 (rounding
enters at every step, the perturbation once), plus 1e-12 of the weights' scale, bounds what rounding can do.
A statistic left per-rank (one rank's firing counts, its own BatchTopK threshold, a local AuxK ratio) moves the
weights by orders of magnitude more. The ranks' own SAEs must agree bitwise: nothing is broadcast to keep
them so.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_cfg

from test_step_equivalence import CASES as STEP_CASES
from test_step_equivalence import COMMON

# the step-equivalence cases (every variant, a resampling event each), with the target-L0 controller on every
# penalty variant, a BatchTopK whose AuxK window counts batches (global ones), and the orthogonality term on
# the features active in the (global) batch
CASES = {
    "relu": STEP_CASES["relu"][0],
    "gated+target_l0": [*STEP_CASES["gated"][0], "train.target_l0=8"],
    "jumprelu+target_l0": [*STEP_CASES["jumprelu"][0], "train.target_l0=8"],
    "scsae+target_l0": [*STEP_CASES["scsae"][0], "train.target_l0=8"],
    "topk": STEP_CASES["topk"][0],
    "batchtopk": ["model=batchtopk", "model.k=4", "model.dead_window_tokens=null", "model.dead_window_batches=2"],
    "relu+l1_decoder_norm+ortho_active": [*STEP_CASES["relu+l1_decoder_norm"][0], "ortho=active",
                                          "ortho.coef=0.1"],
}


def ddp_overrides(case: str, ddp: bool = True) -> list[str]:
    return [*CASES[case], *COMMON, *(["trainer=ddp", "trainer.devices=2"] if ddp else [])]


def one_process(case: str, tmp_path: Path, perturb: float = 0.0) -> dict:
    """The one-process run of the case (the state of its SAE and controller, the resample history)."""
    from saeexp.build.plan import plan_run
    from saeexp.jobs.train import prepare

    plan = plan_run(compose_cfg(ddp_overrides(case, ddp=False), run_dir=tmp_path / "run"))
    ready = prepare(plan)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in plan.sae.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    trainer = plan.make_trainer(max_steps=plan.schedule.steps, logger=False, callbacks=ready.step_callbacks,
                                enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(ready.module, datamodule=ready.datamodule)
    return {"state": copy.deepcopy(ready.module.state_dict()), "history": list(plan.resampler.history)}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every case trained once under trainer=ddp with 2 processes: one launch (about 30 s on 2 cores)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(out), *CASES], cwd=out, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ddp_equals_one_process(case, ddp_runs, tmp_path, one_thread):
    r0 = torch.load(ddp_runs / f"{case}.rank0.pt", weights_only=False)
    r1 = torch.load(ddp_runs / f"{case}.rank1.pt", weights_only=False)
    assert r0["world"] == 2 and r0["steps"] == r1["steps"] == 50
    for name, t in r0["state"].items():  # the ranks hold one SAE: bitwise, with nothing broadcast after the start
        assert torch.equal(t, r1["state"][name]), f"{case}: rank 1's {name} differs from rank 0's"
    assert r0["history"] == r1["history"] and r0["history"] and r0["history"][0][1] > 0, "no resampling event"

    want = one_process(case, tmp_path / "one")
    moved = one_process(case, tmp_path / "moved", perturb=1e-13)
    assert r0["history"] == want["history"], f"{case}: resampled {r0['history']}, one process {want['history']}"
    ctl = [k for k in want["state"] if k.startswith("target_ctl.")]
    assert ("target_l0" in case) == bool(ctl)
    for name, w in want["state"].items():
        got = r0["state"][name]
        if not torch.is_floating_point(w):
            assert torch.equal(got, w), f"{case}: {name}"  # firing counters: global, so exactly the same
            continue
        growth = (moved["state"][name] - w).abs().max().item()
        tol = 100 * growth + 1e-12 * w.abs().max().item()
        diff = (got - w).abs().max().item()
        assert diff <= tol, f"{case}: {name} differs from one process's by {diff:.3g} (rounding allows {tol:.3g})"
