"""The activation cache's guarantees under concurrency, kills and damage (no model needed: the build
function here writes known bytes, and the processes are real)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from saeexp.lm import cache

KEY = {"model": "m", "hook": "blocks.3.hook_resid_pre", "tokens": 1000}

# a builder in its own process: logs that it started, writes 4 MiB slowly, logs that it finished
BUILDER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from saeexp.lm import cache
    root, log, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    key = json.loads(sys.argv[4])
    def build(tmp):
        with open(log, "a") as f: f.write(f"start {os.getpid()}\\n")
        with open(tmp / "train.npy", "wb") as f:
            for i in range(4):
                f.write(bytes([i]) * (1 << 20)); f.flush(); time.sleep(delay)
        return {"pid": os.getpid()}
    folder, manifest = cache.ensure(root, key, build)
    with open(log, "a") as f: f.write(f"done {os.getpid()} {manifest['info']['pid']}\\n")
""")


def _spawn(root, log, delay, key=KEY):
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(root), str(log), str(delay), json.dumps(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _build_counter(calls):
    def build(tmp: Path):
        calls.append(tmp)
        (tmp / "train.npy").write_bytes(os.urandom(300_000))
        return {"n": len(calls)}
    return build


def test_built_once_then_found(tmp_path):
    calls = []
    f1, m1 = cache.ensure(tmp_path, KEY, _build_counter(calls))
    f2, m2 = cache.ensure(tmp_path, KEY, _build_counter(calls))
    assert len(calls) == 1 and f1 == f2 and m1 == m2
    assert (f1 / "train.npy").stat().st_size == 300_000
    # any change of the key is another entry
    f3, _ = cache.ensure(tmp_path, {**KEY, "tokens": 1001}, _build_counter(calls))
    assert len(calls) == 2 and f3 != f1


def test_two_processes_one_builds_other_waits_and_reads(tmp_path):
    log = tmp_path / "log"
    a = _spawn(tmp_path / "c", log, 0.4)
    time.sleep(0.3)
    b = _spawn(tmp_path / "c", log, 0.4)
    outs = [p.communicate(timeout=60) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    lines = log.read_text().split()
    assert lines.count("start") == 1, log.read_text()  # one builder
    done = [ln.split() for ln in log.read_text().splitlines() if ln.startswith("done")]
    assert len(done) == 2 and done[0][2] == done[1][2]  # both read the one build
    assert "waiting for another process" in outs[1][1]


def test_killed_builder_leaves_nothing_usable_and_next_run_rebuilds(tmp_path):
    root, log = tmp_path / "c", tmp_path / "log"
    p = _spawn(root, log, 2.0)
    deadline = time.time() + 30
    while not (log.exists() and "start" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    folder = root / cache.key_digest(KEY)
    assert not folder.exists()  # nothing that looks complete
    assert cache.check(folder, KEY)[0] is None
    assert list(root.glob("*.tmp*"))  # the half-written build is only a temp folder
    calls = []
    f, _ = cache.ensure(root, KEY, _build_counter(calls))  # the lock died with the builder: no wait
    assert len(calls) == 1 and f == folder
    assert not list(root.glob("*.tmp*"))  # the dead builder's leftovers are swept


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_damaged_cache_detected_and_rebuilt(tmp_path, damage):
    calls = []
    folder, _ = cache.ensure(tmp_path, KEY, _build_counter(calls))
    data = folder / "train.npy"
    if damage == "truncate":
        os.truncate(data, data.stat().st_size - 4096)
    elif damage == "flip":
        with open(data, "r+b") as f:
            f.seek(10)
            byte = f.read(1)
            f.seek(10)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        (folder / cache.MANIFEST).write_text("{not json")
    manifest, why = cache.check(folder, KEY)
    assert manifest is None and why
    if damage == "truncate":
        assert "truncated" in why
    f2, m2 = cache.ensure(tmp_path, KEY, _build_counter(calls))
    assert len(calls) == 2 and f2 == folder and m2["info"]["n"] == 2
    assert cache.check(folder, KEY)[0] is not None
