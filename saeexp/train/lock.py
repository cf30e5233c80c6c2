"""One writer per run directory: `run.lock` names its holder; a second process refuses, a dead holder's lock is
taken over (a requeued SLURM job is never blocked by its predecessor).

The lock is a file created with O_EXCL (atomic on local disks and on NFSv3+, Lustre and GPFS), not a kernel
lock: a kernel lock dies with a process on one host, but on a shared filesystem a holder that vanished with its
node can keep it for the server's lease time, and a requeued job would wait on it. Whether a holder is alive is
decided from what the file says: the same SLURM job (a requeued job keeps its id) is our own predecessor; another
SLURM job is alive while `squeue` lists it; a process on this host is alive while its pid runs with the same
start time. A holder on another host without SLURM cannot be checked and is taken as alive.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

from saeexp.errors import ConfigError
from saeexp.util.slurm import slurm_job_id

LOCK_NAME = "run.lock"


class RunLocked(ConfigError):
    """Another live process holds the run directory."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid from the original), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _slurm_job() -> str | None:
    return slurm_job_id() or None


def me() -> dict:
    """What this process writes into the lock: host, pid (and its start time), SLURM job, a unique token."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "slurm_job": _slurm_job(),
            "token": uuid.uuid4().hex}


def _slurm_job_alive(job: str) -> bool:
    """True while squeue lists the job (pending, running, requeued...); True if squeue cannot be asked."""
    try:
        p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if p.returncode != 0:  # an id squeue no longer knows is an error there: the job is gone
        return "invalid job id" not in p.stderr.lower()
    return bool(p.stdout.strip())


def holder_alive(h: dict, mine: dict) -> bool:
    """Whether the process that wrote lock contents `h` may still run (unknown counts as alive)."""
    if h.get("slurm_job") and h["slurm_job"] == mine.get("slurm_job"):
        return False  # our own job id: the predecessor of this requeued job
    if h.get("slurm_job"):
        return _slurm_job_alive(str(h["slurm_job"]))
    if h.get("host") == mine["host"]:
        pid = h.get("pid")
        if not isinstance(pid, int):
            return False
        if mine.get("start") is not None:  # /proc: the pid runs, and is the same process (not a reused pid)
            return _start_time(pid) is not None and _start_time(pid) == h.get("start")
        try:  # no /proc (macOS): whether the pid runs at all
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return True


def describe(h: dict) -> str:
    who = f"host {h.get('host', '?')} pid {h.get('pid', '?')}"
    return who + (f" (SLURM job {h['slurm_job']})" if h.get("slurm_job") else "")


class RunLock:
    """`with RunLock(run_dir):` hold the run directory for the duration, or raise RunLocked (one line)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.mine = me()

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.mine)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_dead()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return self
        raise RunLocked(f"run directory {self.path.parent} is busy: could not take {self.path}")

    def _take_over_if_dead(self) -> None:
        """Raise RunLocked if the holder lives; else move its lock aside (only the one we judged)."""
        try:
            seen = self.path.read_text()
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(seen)
        except ValueError:
            holder = None
        if holder is None:
            # a holder between creating and writing its lock, or one killed right then: wait a little for it
            if time.time() - self.path.stat().st_mtime < 10:
                raise RunLocked(f"run directory {self.path.parent} is being taken by another process "
                                f"({self.path} is still empty)")
        elif holder_alive(holder, self.mine):
            raise RunLocked(f"run directory {self.path.parent} is in use by {describe(holder)}; "
                            f"if that process is gone, remove {self.path}")
        # rename is atomic: of several processes taking over, one moves the file; it checks that it moved the
        # lock it judged dead (not a live one created since), and puts a live one back
        grave = self.path.with_name(f"{LOCK_NAME}.stale.{self.mine['host']}.{self.mine['pid']}.{self.mine['token']}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if grave.read_text() != seen:
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        grave.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        try:  # release only our own lock (never one a later process took over)
            if json.loads(self.path.read_text()).get("token") == self.mine["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
