"""Keep freed [batch, width] buffers in the process instead of returning them to the OS after every step.

glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmap()s and unmaps them on free, so
every step's activation-sized tensors (64 MiB at batch 4096, width 4096) are page-faulted in anew, and a
first touch costs several times a copy. With mmap off and a high trim threshold, freed blocks stay in the heap
and the next step reuses them (the step's speed with and without: docs/benchmarks.md). The cost: the process
keeps its peak heap, and blocks of other sizes fragment it. So it holds for training only: `release_freed_memory`
restores glibc's defaults when fit ends. Kept through the end-of-run CE evaluation (logits of 8 x 128 x 49152
floats, 200 MB, in several sizes), the demo's RSS grew by about 400 MB per batch to a peak of 8.1 GB.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's own (mallopt(3))
_INT_MAX = 2 ** 31 - 1
_done = False


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (Linux/glibc only; a no-op elsewhere). Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        # mallopt takes a C int: 1 << 40, the value used until 2026-12-08, arrived as 0, so glibc trimmed every
        # freed block at the top of the heap (kept only those inside it); INT_MAX keeps up to 2 GB at the top
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _done = ok
    return ok


def release_freed_memory() -> None:
    """Undo `reuse_freed_memory`: glibc's default mmap and trim behaviour, and the kept heap returned to the OS."""
    global _done
    if not _done:
        return
    libc = _libc()  # reuse_freed_memory loaded it: glibc is there
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
    libc.malloc_trim(0)
    _done = False
