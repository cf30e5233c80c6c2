"""Files that a reader (or a kill) never sees half-written, and a lock the kernel releases if its holder dies."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import uuid
from pathlib import Path


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """A sibling name no other writer uses, on any host sharing the filesystem: `<name>.<kind>.<host>.<pid>.<rand>`
    (a pid alone repeats across the nodes of a cluster)."""
    return path.with_name(f"{path.name}.{kind}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a reader (or a kill) never sees half of it."""
    tmp = temp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str):
    """Hold an exclusive flock on `path` (created if needed); say so when waiting on another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"saeexp: waiting for another process building {what}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def naming(path: Path):
    """An OSError raised inside names `path` when it names no file itself: a write() that hits a full disk names
    none, and the one-line error promises the file's name."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
