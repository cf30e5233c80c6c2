"""`trainer=ddp`: one SAE trained by 2 processes (Lightning's DDP over gloo, on CPU) equals the one-process SAE.

Each rank steps on its half of every global batch; the firing counts (dead latents, AuxK, resampling), the L0
the target-L0 controller sees, BatchTopK's batch-level threshold, AuxK's ratio, the resampler's reservoir and
the logged values are global (saeexp/util/ranks.py). So the two SAEs may differ only by float rounding: the
gradient of a half batch summed over the ranks rounds differently from the whole batch's.

The tolerance is measured, as in tests/test_step_equivalence.py: everything in float64 (`64-true`), and the
one-process run repeated from initial weights moved by a relative `PERTURB` (the unit roundoff of the lowest
precision the case's step computes in, times a few); the distance that perturbation grows to over the same
steps, times 100 (rounding enters at every step, the perturbation once), plus 1e-12 of the weights' scale,
bounds what rounding can do. JumpReLU computes z - theta and its threshold's pseudo-gradient in float32 by design
(saeexp/sae/jumprelu.py), so its rounding is float32's: its perturbation is float32's unit roundoff.
A statistic left per-rank (one rank's firing counts, its own BatchTopK threshold, a local AuxK ratio) resamples
other features or keeps other latents, and moves the weights by orders of magnitude more. The ranks' own SAEs
must agree bitwise: nothing is broadcast to keep them so.
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

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_cfg
from test_step_equivalence import CASES as STEP_CASES
from test_step_equivalence import COMMON

# every variant with a resampling event (the step-equivalence cases), the target-L0 controller on every penalty
# variant, a BatchTopK whose AuxK window counts batches (global ones), and on ReLU the decoder-norm L1 with the
# orthogonality term on the features active in the (global) batch
CASES = {
    "relu+ortho_active": [*STEP_CASES["relu+l1_decoder_norm"][0], "ortho=active", "ortho.coef=0.1"],
    "gated+target_l0": [*STEP_CASES["gated"][0], "train.target_l0=8"],
    "jumprelu+target_l0": [*STEP_CASES["jumprelu"][0], "train.target_l0=8"],
    "scsae+target_l0": [*STEP_CASES["scsae"][0], "train.target_l0=8"],
    "topk": STEP_CASES["topk"][0],
    "batchtopk": ["model=batchtopk", "model.k=4", "model.dead_window_tokens=null", "model.dead_window_batches=2"],
}
# activations read from a file (data=file: the chunked, shuffled reader the activation cache uses too), so each
# rank's shard is cut from a reader's batches and not only from synthetic ones; ACTS is written by ddp_runs
CASES["relu+file"] = ["model=relu", "loss.l1=1", "data=file", "data.path={acts}", "data.d_in=16",
                      "data.heldout_tokens=256", "data.chunk_tokens=512", "data.buffer_chunks=4"]
CLI_CASE = "relu"  # trained by the `saeexp` command (test_saeexp_trainer_ddp...), killed and resumed
CASES[CLI_CASE] = STEP_CASES["relu"][0]
PERTURB = {"jumprelu+target_l0": 6e-8}  # float32's unit roundoff; 1e-13 (a few hundred float64 ulps) otherwise


def ddp_overrides(case: str, ddp: bool = True, acts: Path | None = None) -> list[str]:
    own = [o.format(acts=acts) for o in CASES[case]]
    # COMMON's data.* keys are the synthetic source's; a case with its own data= keeps its own
    common = [o for o in COMMON if not (o.startswith("data.") and "data=file" in own)]
    return [*own, *common, *(["trainer=ddp", "trainer.devices=2"] if ddp else [])]


def write_acts(path: Path) -> Path:
    """8,192 rows of sparse combinations of 48 random directions in d_in 16 (the file case's activations)."""
    g = torch.Generator().manual_seed(5)
    codes = (torch.rand(8192, 48, generator=g) < 0.06) * torch.rand(8192, 48, generator=g)
    np.save(path, (codes @ torch.randn(48, 16, generator=g)).numpy().astype(np.float32))
    return path


def one_process(case: str, tmp: str, perturb: float = 0.0, acts: Path | None = None) -> dict:
    """The one-process run of the case (the state of its SAE and controller, the resample history)."""
    from saeexp.build.plan import plan_run
    from saeexp.jobs.train import prepare

    torch.set_num_threads(1)
    plan = plan_run(compose_cfg(ddp_overrides(case, ddp=False, acts=acts), run_dir=Path(tmp) / "run"))
    ready = prepare(plan)
    # in float64 already (what 64-true does at the fit's start): a relative 1e-13 is no change to a float32
    plan.sae.double()
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in plan.sae.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    trainer = plan.make_trainer(max_steps=plan.schedule.steps, logger=False, callbacks=ready.step_callbacks,
                                enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp)
    trainer.fit(ready.module, datamodule=ready.datamodule)
    return {"state": copy.deepcopy(ready.module.state_dict()), "history": [tuple(h) for h in plan.resampler.history]}


def assert_equals_one_process(case: str, state: dict, history, tmp: Path, acts: Path | None = None) -> None:
    """`state` (a module state_dict) is the one-process run's within what rounding can do."""
    want = one_process(case, str(tmp / "one"), acts=acts)
    moved = one_process(case, str(tmp / "moved"), perturb=PERTURB.get(case, 1e-13), acts=acts)
    assert [tuple(h) for h in history] == want["history"], f"{case}: resampled {history}, one process " \
                                                           f"{want['history']}"
    ctl = [k for k in want["state"] if k.startswith("target_ctl.")]
    assert ("target_l0" in case) == bool(ctl)
    for name, w in want["state"].items():
        got = state[name]
        if not isinstance(w, torch.Tensor):  # a loss term's extra state (ortho's refresh schedule)
            assert got == w, f"{case}: {name}"
            continue
        if not torch.is_floating_point(w):
            assert torch.equal(got, w), f"{case}: {name}"  # firing counters: global, so exactly the same
            continue
        growth = (moved["state"][name] - w).abs().max().item()
        tol = 100 * growth + 1e-12 * w.abs().max().item()
        diff = (got.double() - w).abs().max().item()
        assert diff <= tol, f"{case}: {name} differs from one process's by {diff:.3g} (rounding allows {tol:.3g})"


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every case but the CLI's trained under trainer=ddp with 2 processes: one launch (about 25 s on 2 cores)."""
    out = tmp_path_factory.mktemp("ddp")
    write_acts(out / "acts.npy")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cases = [c for c in CASES if c != CLI_CASE]
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(out), *cases], cwd=out, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c != CLI_CASE])
def test_ddp_equals_one_process(case, ddp_runs, tmp_path_factory, one_thread):
    r0 = torch.load(ddp_runs / f"{case}.rank0.pt", weights_only=False)
    r1 = torch.load(ddp_runs / f"{case}.rank1.pt", weights_only=False)
    assert r0["world"] == 2 and r0["steps"] == r1["steps"] == 50
    for name, t in r0["state"].items():  # the ranks hold one SAE: bitwise, with nothing broadcast after the start
        same = torch.equal(t, r1["state"][name]) if isinstance(t, torch.Tensor) else t == r1["state"][name]
        assert same, f"{case}: rank 1's {name} differs from rank 0's"
    assert r0["history"] == r1["history"] and r0["history"] and r0["history"][0][1] > 0, "no resampling event"
    assert_equals_one_process(case, r0["state"], r0["history"], tmp_path_factory.mktemp(case),
                              acts=ddp_runs / "acts.npy")


def _saeexp(args: list[str], cwd: Path, env: dict, hold: Path | None = None) -> subprocess.Popen:
    env = {**env, **({"SAEEXP_TEST_HOLD": str(hold)} if hold else {})}
    return subprocess.Popen(["saeexp", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_saeexp_trainer_ddp_one_run_killed_rank_resumes_equal_to_one_process(tmp_path, one_thread):
    """The command a user types: one run directory, one lock, one MLflow run, one checkpoint; kill -9 of rank 1
    mid-run (Lightning then kills rank 0), and the same command again resumes and equals the one-process SAE."""
    import mlflow

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    # the hold is inert without SAEEXP_TEST_HOLD: both launches are the same command
    args = [*ddp_overrides(CLI_CASE), "train.checkpoint_every=20", "+callbacks.hold._target_=ddp_hold.HoldAt",
            "+callbacks.hold.step=30", "name=ddp"]
    hold = tmp_path / "hold"
    hold.mkdir()
    first = _saeexp(args, tmp_path, env, hold)
    deadline = time.monotonic() + 300
    while not (hold / "rank1").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (hold / "rank1").exists(), first.communicate()[1][-4000:] if first.poll() is not None else "timeout"
    os.kill(int((hold / "rank1").read_text()), signal.SIGKILL)
    first.communicate(timeout=120)  # Lightning's observer in rank 0 kills it when a rank dies
    assert first.returncode != 0
    run_dirs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run = run_dirs[0]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20

    second = _saeexp(args, tmp_path, env)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-4000:]
    assert "Restoring states from the checkpoint" in out + err  # resumed, not started over
    assert [p.name for p in (tmp_path / "runs" / "ddp").iterdir()] == [run.name]
    assert not (run / "run.lock").exists() and (run / "metrics.json").exists() and (run / "sae").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no stray partial files
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # conftest's, under tmp_path
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    # the killed launch's run is reopened by the resume (its id is kept in the run directory), not a second one
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 50

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 50
    resampler = next(v for k, v in ckpt["callbacks"].items() if k.startswith("Resampling"))
    history = resampler["_extra_state"]["history"]
    assert_equals_one_process(CLI_CASE, ckpt["state_dict"], history, tmp_path)


@pytest.mark.parametrize("bad, says", [(["trainer.devices=3", "train.batch_size=1000"], "expected a multiple of 3"),
                                       (["trainer.devices=0"], "expected at least 1")])
def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_any_rank_starts(bad, says, capsys,
                                                                                        tmp_path):
    from test_bad_inputs import run_cli

    code, err = run_cli(["saeexp", "trainer=ddp", *bad], capsys)
    assert code == 2 and err.strip().splitlines() == [next(ln for ln in err.splitlines() if says in ln)]
    assert err.startswith("saeexp: error: ")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.lock"))
