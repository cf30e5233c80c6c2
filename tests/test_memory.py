"""train.reuse_memory: glibc keeps freed step buffers in the heap during fit, and gives them back when fit ends."""
import subprocess
import sys

CHILD = r"""
import ctypes
from saeexp.train.memory import release_freed_memory, reuse_freed_memory

def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024

if not reuse_freed_memory():  # not Linux with glibc: checked before glibc's malloc is loaded below
    print("skip"); raise SystemExit
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
base = rss()
block = libc.malloc(256 << 20)  # a 256 MB step buffer: from the heap now (glibc would otherwise mmap it)
ctypes.memset(block, 1, 256 << 20)
above = libc.malloc(64 << 20)  # no free hole holds it, so it lands above: the block is inside the heap, not its top
libc.free(block)
kept = rss() - base
top = libc.malloc(320 << 20)  # larger than the hole: at the top of the heap; freed, kept too (trimmed before the fix)
ctypes.memset(top, 1, 320 << 20)
libc.free(top)
kept_top = rss() - base - kept
release_freed_memory()
print(kept, kept_top, rss() - base)
libc.free(above)
"""


def test_the_heap_kept_for_training_is_given_back():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    if out == ["skip"]:  # not glibc: nothing was kept
        return
    kept, kept_top, after = map(float, out)
    assert kept > 200, out  # the freed 256 MB stayed resident while reuse was on (with glibc's mmap it would not)
    assert kept_top > 250, out  # so did one freed at the top of the heap (mallopt got a C int's 0 for 1 << 40)
    assert after < 50, out  # and both went back to the OS at release
