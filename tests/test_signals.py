"""SIGTERM and SIGINT sent to a real `saeexp` process: it checkpoints at the signal, says so in one line, exits
128 + the signal number, marks its MLflow run KILLED, and the same command resumes to the weights of an
uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

TESTS = str(Path(__file__).resolve().parent)
RUN = ["model=relu", "model.d_sae=64", "train.batch_size=1024", "train.tokens=204800", "train.log_every=10",
       "train.checkpoint_every=40", "train.init_sample_tokens=4096", "data.heldout_tokens=4096"]


def _env(tmp_path: Path, runs: str) -> dict:
    return {**os.environ, "SAEEXP_RUNS": str(tmp_path / runs), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)}


def _stop_with(sig: signal.Signals, argv: list[str], env: dict, ready: Path) -> tuple[int, str, int]:
    """Start `argv`, send `sig` once it trains past the ready step; its exit code, stdout and the step it named."""
    ready.unlink(missing_ok=True)
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), p.communicate()[1][-3000:] if p.poll() is not None else "timed out"
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    last = err.strip().splitlines()[-1]
    prefix, suffix = f"saeexp: stopped by {sig.name} at step ", "; checkpoint kept; the same command resumes"
    assert last.startswith(prefix) and last.endswith(suffix), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return p.returncode, out, int(last[len(prefix):-len(suffix)])


def test_sigterm_and_sigint_checkpoint_say_so_exit_128_plus_n_and_the_same_command_resumes(tmp_path):
    from mlflow.tracking import MlflowClient

    ready = tmp_path / "ready"
    argv = ["saeexp", *RUN, "name=sig", "+callbacks.ready._target_=faults.ReadyAt", f"+callbacks.ready.path={ready}"]
    env = _env(tmp_path, "runs")
    # meanwhile, the same config uninterrupted (the pacing callback changes no weights), for the final weights
    ref = subprocess.Popen(["saeexp", *RUN, "name=ref"], env=_env(tmp_path, "ref"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    try:
        code, _, step = _stop_with(signal.SIGTERM, argv, env, ready)
        assert code == 128 + signal.SIGTERM
        (run_dir,) = (tmp_path / "runs" / "sig").iterdir()
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        # written at the signal, not at the last periodic checkpoint (every 40 steps); no partial file beside it
        assert torch.load(ckpt, weights_only=True)["global_step"] == step >= 50
        assert [p.name for p in ckpt.parent.iterdir()] == ["last.ckpt"]
        run = client.get_run((run_dir / "mlflow_run_id").read_text())
        assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["failure_reason"]

        # the same command resumes from that step; Ctrl-C stops it again at a later step
        code, out, step2 = _stop_with(signal.SIGINT, argv, env, ready)
        assert code == 128 + signal.SIGINT and f"saeexp: resumed at step {step}" in out and step2 > step
        assert torch.load(ckpt, weights_only=True)["global_step"] == step2

        ready.unlink()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        _, ref_err = ref.communicate(timeout=300)
    finally:
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, ref_err[-3000:]
    run = client.get_run(run.info.run_id)  # the same MLflow run, finished, with no stale reason left on it
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    a = load_file(str(run_dir / "sae" / "sae.safetensors"))
    (ref_dir,) = (tmp_path / "ref" / "ref").iterdir()
    b = load_file(str(ref_dir / "sae" / "sae.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), "resumed weights differ"
