"""The project's real services for tests and benchmarks: a local SLURM cluster and an MLflow server, by script.

Both are started by the scripts under `scripts/` and stopped by the pids those scripts keep (never by name).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@contextlib.contextmanager
def slurm_cluster(directory: Path, port_base: int = 6817, cpus: int = 4):
    """Start scripts/slurm-local in `directory`; yield the environment (SLURM_CONF) to run clients with."""
    env = {**os.environ, "SLURM_LOCAL_PORT_BASE": str(port_base), "SLURM_LOCAL_CPUS": str(cpus)}
    out = subprocess.run([str(SCRIPTS / "slurm-local" / "start.sh"), str(directory)], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"slurm-local did not start:\n{out.stderr[-3000:]}")
    try:
        yield {"SLURM_CONF": str(Path(directory) / "slurm.conf"), "PATH": os.environ["PATH"] + ":/usr/sbin"}
    finally:
        subprocess.run([str(SCRIPTS / "slurm-local" / "stop.sh"), str(directory)], timeout=120)


@contextlib.contextmanager
def mlflow_server(directory: Path, port: int = 5000):
    """Start scripts/mlflow-server.sh in `directory`; yield its tracking URI."""
    script = str(SCRIPTS / "mlflow-server.sh")
    out = subprocess.run([script, "start", str(directory), str(port)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"mlflow server did not start:\n{out.stderr[-3000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop", str(directory)], timeout=60)
