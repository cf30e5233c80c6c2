"""A keyed on-disk cache: one builder, many readers, nothing half-built ever looks complete.

An entry is a directory `<root>/<digest>/` holding data files and `manifest.json` (the key, each file's
size and a checksum of sampled slices). It is built under `<digest>.tmp<pid>` and renamed into place
in one `os.replace`, so it either exists whole or not at all. Builders serialise on an `fcntl.flock`
of `<digest>.lock`: the kernel drops the lock when its holder dies, so a killed builder never leaves
it stuck, and the next process sweeps the dead builder's temp folder and builds again. An entry whose
files do not match its manifest (truncated, damaged) is moved aside and rebuilt, never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from saeexp.util.files import exclusive_lock

MANIFEST = "manifest.json"
SAMPLES = 16  # slices checksummed per file: catches damage anywhere with probability ~ damage size
SAMPLE_BYTES = 1 << 16


def key_digest(key: dict) -> str:
    """A stable name for a key: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sampled_checksum(path: Path, size: int) -> str:
    """blake2b over SAMPLES evenly spaced slices and the size: cheap (1 MiB read) whatever the file size."""
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for i in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * i // max(1, SAMPLES - 1) if size > SAMPLE_BYTES else 0)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def describe_files(folder: Path) -> dict:
    return {p.name: {"size": p.stat().st_size, "checksum": sampled_checksum(p, p.stat().st_size)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def check(folder: Path, key: dict) -> tuple[dict | None, str]:
    """(manifest, "") when the entry is complete and intact; (None, why) otherwise."""
    mpath = folder / MANIFEST
    if not mpath.exists():
        return None, "missing"
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable manifest ({e})"
    if manifest.get("key") != json.loads(json.dumps(key, default=str)):
        return None, "manifest key differs"
    for name, want in manifest.get("files", {}).items():
        p = folder / name
        if not p.exists():
            return None, f"{name} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return None, f"{name} has {size} bytes, manifest says {want['size']} (truncated?)"
        if sampled_checksum(p, size) != want["checksum"]:
            return None, f"{name} does not match its checksum (damaged)"
    return manifest, ""


def ensure(root: Path, key: dict, build: Callable[[Path], dict], what: str = "cache") -> tuple[Path, dict]:
    """The folder of the entry for `key`, building it with `build(tmp_folder) -> info` if needed.

    Returns (folder, manifest). `build` writes its files into the folder it is given; `info` (JSON)
    is stored in the manifest. Safe for any number of concurrent callers.
    """
    root = Path(root)
    folder = root / key_digest(key)
    manifest, why = check(folder, key)
    if manifest is not None:  # the common case: no lock needed to read a complete entry
        return folder, manifest
    with exclusive_lock(root / f"{folder.name}.lock", f"{what} {folder}"):
        manifest, why = check(folder, key)  # someone may have built it while we waited
        if manifest is not None:
            return folder, manifest
        for stale in root.glob(f"{folder.name}.tmp*"):  # a dead builder's leftovers (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            print(f"saeexp: {what} {folder} is not usable ({why}); rebuilding", file=sys.stderr, flush=True)
            bad = root / f"{folder.name}.bad{os.getpid()}"
            os.replace(folder, bad)  # readers holding its files open keep reading the old inodes
            shutil.rmtree(bad, ignore_errors=True)
        tmp = root / f"{folder.name}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        t0 = time.time()
        try:
            info = build(tmp)
        except BaseException:  # a refused config or an interrupt: leave no partial build behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for p in tmp.iterdir():  # data on disk before the entry becomes visible
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        manifest = {"key": json.loads(json.dumps(key, default=str)), "files": describe_files(tmp),
                    "info": info, "build_seconds": round(time.time() - t0, 2), "created": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder)
        return folder, manifest
