"""Keep freed [batch, width] buffers in the process instead of returning them to the OS after every step.

glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmap()s and unmaps them on free, so
every step's activation-sized tensors (64 MiB at batch 4096, width 4096) are page-faulted in anew, and a
first touch costs several times a copy. With mmap off and a high trim threshold, freed blocks stay in the heap
and the next step reuses them (the step's speed with and without: docs/benchmarks.md). The cost: the process
keeps its peak heap.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (Linux/glibc only; a no-op elsewhere). Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _done = ok
    return ok
