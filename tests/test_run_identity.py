"""Run identity: the run directory is named by the command and a hash of the resolved config; one process at a
time holds it; a dead holder's lock is taken over."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from saeexp.build.identity import HASH_CHARS
from saeexp.io import temp_name
from saeexp.train.lock import LOCK_NAME, RunLock, RunLocked


def run_dir(overrides, conf=CONF) -> str:
    """The run directory Hydra would create for `saeexp <overrides>`."""
    import saeexp.build.resolvers  # noqa: F401  (the run_name resolver)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.run.dir


def test_an_edited_yaml_default_gets_another_directory(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    before = run_dir(["model.d_sae=64"], conf)
    path = conf / "loss" / "l1.yaml"
    path.write_text(path.read_text().replace("\nl1: ", "\nl1: 1.5e-3  # was "))
    after = run_dir(["model.d_sae=64"], conf)
    assert before != after and Path(before).name.split("__")[0] == Path(after).name.split("__")[0]


def test_trainer_and_matmul_precision_are_part_of_the_identity_and_log_cadence_is_not():
    base = run_dir(["model.d_sae=64"])
    assert run_dir(["model.d_sae=64", "trainer=gpu"]) != base
    assert run_dir(["model.d_sae=64", "train.matmul_precision=high"]) != base
    assert run_dir(["model.d_sae=64", "train.log_every=7", "train.checkpoint_every=9"]) == base


def test_no_cut_of_the_name_merges_two_configs():
    stem = "/data/" + "activations_of_a_long_descriptive_folder_name/" * 6
    a = run_dir(["data=file", f"data.path={stem}a.npy", "data.d_in=32"])
    b = run_dir(["data=file", f"data.path={stem}b.npy", "data.d_in=32"])
    assert a != b and len(Path(a).name) <= 200 and Path(a).name[:150] == Path(b).name[:150]
    assert all(len(Path(p).name.rsplit("__", 1)[1]) == HASH_CHARS for p in (a, b))


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # two real processes
def test_two_identical_commands_at_once_give_one_run_and_one_refusal(tmp_path):
    gate = tmp_path / "gate"
    cmd = ["saeexp", "model.d_sae=32", "train.tokens=8192", "train.batch_size=1024", "train.log_every=4",
           "train.init_sample_tokens=2048", "data.heldout_tokens=2048", "name=locks",
           "+callbacks.gate._target_=conftest.WaitForFile", f"+callbacks.gate.path={gate}"]
    # both at once: whichever takes the run directory first waits at its gate, so the other must meet the lock
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        t0 = time.monotonic()
        while all(p.poll() is None for p in procs) and time.monotonic() - t0 < 300:
            time.sleep(0.2)
        second = next(p for p in procs if p.poll() is not None)
        first = next(p for p in procs if p is not second)
        refusal = second.stderr.read()
        (lock,) = (Path(os.environ["SAEEXP_RUNS"]) / "locks").glob(f"*/{LOCK_NAME}")  # the holder's, at its gate
    finally:
        gate.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2
    errors = [line for line in refusal.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("saeexp: error: run directory "), refusal
    assert f"host {socket.gethostname()} pid {first.pid}" in errors[0]
    run = lock.parent
    assert "_model.d_sae-32_" in run.name and len(run.name.rsplit("__", 1)[1]) == HASH_CHARS
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8 and (run / "sae" / "sae.safetensors").exists()
    assert not (run / LOCK_NAME).exists() and not list(run.glob("*.tmp.*"))  # released, no leftovers

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("locks").experiment_id])
    assert [r.info.run_id for r in runs] == [(run / "mlflow_run_id").read_text()]
    assert runs[0].info.status == "FINISHED"


def test_a_live_holder_is_refused_and_a_killed_one_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom saeexp.train.lock import RunLock\n"
                               f"RunLock({str(tmp_path)!r}).__enter__()\nprint('held', flush=True)\ntime.sleep(600)"],
                              env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"in use by host {socket.gethostname()} pid {holder.pid}"):
            RunLock(tmp_path).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # a killed process leaves its lock behind
    with RunLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.mine["token"]
    assert not (tmp_path / LOCK_NAME).exists()


def _foreign_lock(path: Path, slurm_job: str | None):
    (path / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "start": "1",
                                              "slurm_job": slurm_job, "token": "theirs"}))


def test_slurm_holders(tmp_path, monkeypatch):
    # a requeued job keeps its id: the lock of that id is its own predecessor's, taken over
    _foreign_lock(tmp_path, "777")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    with RunLock(tmp_path):
        pass
    # another job: alive while squeue lists it, taken over once squeue no longer knows it
    monkeypatch.setenv("SLURM_JOB_ID", "900")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _foreign_lock(tmp_path, "778")
    squeue.write_text("#!/bin/sh\necho RUNNING\n")
    squeue.chmod(0o755)
    with pytest.raises(RunLocked, match="host node-elsewhere pid 4242 \\(SLURM job 778\\)"):
        RunLock(tmp_path).__enter__()
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    with RunLock(tmp_path):
        pass
    # a holder on another host without SLURM cannot be checked: refused, with how to clear it
    _foreign_lock(tmp_path, None)
    with pytest.raises(RunLocked, match="if that process is gone, remove"):
        RunLock(tmp_path).__enter__()


def test_temporary_names_are_unique_per_writer(tmp_path):
    a, b = temp_name(tmp_path / "metrics.json"), temp_name(tmp_path / "metrics.json")
    assert a != b and f"{socket.gethostname()}.{os.getpid()}." in a.name
