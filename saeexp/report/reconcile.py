"""Runs killed from outside (out of memory, SIGKILL, node failure) cannot mark themselves: match MLflow to `sacct`."""
from __future__ import annotations

import shutil
import subprocess

# SLURM states after which a job runs no more (PREEMPTED without requeue included); a requeued job is PENDING
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}
OPEN = ("RUNNING", "SCHEDULED")  # MLflow statuses of a run that has not ended (SCHEDULED: waiting for a requeue)


def sacct_states(job_ids: list[str], timeout: float = 60) -> dict[str, tuple[str, str]]:
    """job id -> (state, exit code) from `sacct`; empty when there is no SLURM here."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            # "CANCELLED by 0" -> CANCELLED; an array task's id is "<array>_<task>", as the runs record it
            states[parts[0]] = (parts[1].split()[0] if parts[1] else "", parts[2])
    return states


def reconcile(client, experiment_id: str, states: dict | None = None) -> list[tuple[str, str]]:
    """Mark FAILED, with the reason, every open run whose SLURM job has ended; return [(run id, reason)]."""
    runs = [r for r in client.search_runs([experiment_id], max_results=10000)
            if r.info.status in OPEN and r.data.tags.get("slurm_job_id")]
    if states is None:
        states = sacct_states(sorted({r.data.tags["slurm_job_id"] for r in runs}))
    marked = []
    for r in runs:
        job = r.data.tags["slurm_job_id"]
        state, code = states.get(job, ("", ""))
        if state not in ENDED:
            continue
        reason = (f"killed from outside: SLURM job {job} ended {state} (exit code {code}) while the run was "
                  f"{r.info.status}; marked by saeexp-pareto from sacct")
        client.set_tag(r.info.run_id, "failure_reason", reason)
        client.set_terminated(r.info.run_id, "FAILED")
        marked.append((r.info.run_id, reason))
    return marked
