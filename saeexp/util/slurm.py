"""The SLURM job this process runs in, as `sacct -j` takes it."""
from __future__ import annotations

import os
import subprocess


def slurm_job_id() -> str:
    """`<array job>_<task>` for an array task, else the job id; '' outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def at_time_limit() -> bool:
    """Whether SLURM is ending this job for its time limit (`squeue`'s reason is TimeLimit while the job's
    SIGTERM is delivered; `scancel` leaves it None); False outside SLURM or when squeue cannot tell."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "TimeLimit"
