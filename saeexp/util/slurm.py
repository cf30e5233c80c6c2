"""The SLURM job this process runs in, as `sacct -j` takes it."""
from __future__ import annotations

import os


def slurm_job_id() -> str:
    """`<array job>_<task>` for an array task, else the job id; '' outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")
