"""The activation cache of `data=lm`: one entry per key, grown in shards instead of rebuilt.

An entry `<root>/<digest>/` holds the held-out windows' tokens and activations (`heldout.npy`,
`heldout_windows.npy`), training shards `train-00000.npy` (+ `.windows.npy`), each at most `shard_bytes`
(1 GiB by default), and `manifest.json`: the key, every listed file's size and sampled checksum, and per shard
its window count and the corpus Position after its last window. The key leaves out the token count: asking
for more tokens than the entry holds extends it from that Position, so no token is harvested twice.

Writers serialise on `<digest>.lock` (an flock the kernel drops when its holder dies; saeexp/lm/cache.py).
A shard is written under `<digest>.tmp<pid>/`, flushed to disk, renamed into the entry, and only then listed
by a new manifest (written to a temporary name and renamed): readers see the manifest before or after, never
a partial shard. A killed extension leaves the entry as its last manifest lists it (the shards committed so
far); the next writer sweeps unlisted files and temporary folders and goes on from the last listed shard. A
listed file that fails its size or checksum is cut off with every shard after it (a damaged held-out set:
the whole entry) and harvested again.

Reads use pread into the caller's buffer, never a memory map: mapped pages of the cache would count in the
process's resident memory and grow with the cache (issue 27: 10.6 GB peak at 4M tokens).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from saeexp.errors import ConfigError
from saeexp.lm.cache import exclusive_lock, key_digest, sampled_checksum
from saeexp.lm.harvest import NpyWriter
from saeexp.lm.windows import Position, WindowStream
from saeexp.util.files import naming

MANIFEST = "manifest.json"
SHARD_BYTES = 1 << 30
_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 bits as uint16


def _file_entry(path: Path) -> dict:
    size = path.stat().st_size
    return {"size": size, "checksum": sampled_checksum(path, size)}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Replace the manifest in one rename (after its bytes are on disk)."""
    tmp = folder / f"{MANIFEST}.tmp{os.getpid()}"
    manifest["updated"] = time.time()  # when the entry last changed (it only grows)
    with naming(tmp), open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)


def _bad_file(folder: Path, name: str, want: dict) -> str:
    p = folder / name
    if not p.exists():
        return f"{name} is missing"
    size = p.stat().st_size
    if size != want["size"]:
        return f"{name} has {size} bytes, manifest says {want['size']} (truncated?)"
    if sampled_checksum(p, size) != want["checksum"]:
        return f"{name} does not match its checksum (damaged)"
    return ""


def check(folder: Path, key: dict) -> tuple[dict | None, int | None, str]:
    """(manifest, index of the first bad shard or None, why): manifest None when the entry is unusable as a
    whole (missing, another key, a damaged held-out set)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, None, "missing"
    except (OSError, ValueError) as e:
        return None, None, f"unreadable manifest ({e})"
    if manifest.get("key") != json.loads(json.dumps(key, default=str)):
        return None, None, "manifest key differs"
    for name, want in manifest.get("files", {}).items():
        why = _bad_file(folder, name, want)
        if why:
            return None, None, why
    for i, shard in enumerate(manifest.get("shards", [])):
        for name, want in shard["files"].items():
            why = _bad_file(folder, name, want)
            if why:
                return manifest, i, why
    return manifest, None, ""


def train_windows(manifest: dict) -> int:
    return sum(s["windows"] for s in manifest["shards"])


class ActivationStore:
    """The growing cache entry of one key. `ensure(n)` returns a manifest listing at least n training windows.

    The caller supplies the corpus and the model: `open_windows(position)` a WindowStream from there,
    `harvest(windows_WT, writer, desc)` the activations of positions [first:] of each window (tokens/s back), and
    `too_short(got, need, train)` the refusal when the corpus runs out (naming the corpus).
    """

    def __init__(self, root: Path, key: dict, d_in: int, dtype: str, per_window: int, n_heldout_windows: int,
                 open_windows: Callable[[Position], WindowStream], harvest: Callable,
                 too_short: Callable[[int, int, bool], str], shard_bytes: int = SHARD_BYTES):
        self.root, self.key, self.d_in, self.dtype = Path(root), key, d_in, dtype
        self.per, self.n_heldout = per_window, n_heldout_windows
        self.open_windows, self.harvest, self.too_short = open_windows, harvest, too_short
        itemsize = np.dtype(_NP[dtype]).itemsize
        self.shard_windows = max(1, shard_bytes // (per_window * d_in * itemsize))
        self.folder = self.root / key_digest(key)

    def ensure(self, need_windows: int) -> dict:
        """The manifest of an intact entry holding >= need_windows training windows, growing it if needed."""
        manifest, bad, _ = check(self.folder, self.key)
        if manifest is not None and bad is None and train_windows(manifest) >= need_windows:
            return manifest  # the common case: no lock to read a complete entry
        with exclusive_lock(self.root / f"{self.folder.name}.lock", f"activation cache {self.folder}"):
            manifest, bad, why = check(self.folder, self.key)  # someone may have grown it while we waited
            if manifest is not None and bad is None and train_windows(manifest) >= need_windows:
                return manifest
            self._sweep(manifest)
            if manifest is None:
                manifest = self._create(why)
            elif bad is not None:
                print(f"saeexp: activation cache {self.folder}: {why}; harvesting shards {bad}.. again",
                      file=sys.stderr, flush=True)
                manifest = self._cut(manifest, bad)
            return self._extend(manifest, need_windows)

    # --- under the lock --------------------------------------------------------------------------------
    def _sweep(self, manifest: dict | None) -> None:
        """A dead writer's leftovers: temporary folders, and files of the entry no manifest lists."""
        for stale in self.root.glob(f"{self.folder.name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        if manifest is None or not self.folder.is_dir():
            return
        listed = {MANIFEST, *manifest["files"], *(n for s in manifest["shards"] for n in s["files"])}
        for p in self.folder.iterdir():
            if p.name not in listed:
                p.unlink(missing_ok=True)

    def _create(self, why: str) -> dict:
        """A new entry with the held-out set and no training shard yet, renamed into place whole."""
        if self.folder.exists():
            if why != "missing":
                print(f"saeexp: activation cache {self.folder} is not usable ({why}); rebuilding",
                      file=sys.stderr, flush=True)
            bad = self.root / f"{self.folder.name}.bad{os.getpid()}"
            os.replace(self.folder, bad)  # readers holding its files open keep reading the old inodes
            shutil.rmtree(bad, ignore_errors=True)
        tmp = self.root / f"{self.folder.name}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            stream = self.open_windows(Position())
            held = stream.take(self.n_heldout)
            if len(held) < self.n_heldout:
                raise ConfigError(self.too_short(len(held), self.n_heldout, False))
            with naming(tmp / "heldout_windows.npy"):
                np.save(tmp / "heldout_windows.npy", held)
            writer = NpyWriter(tmp / "heldout.npy", len(held) * self.per, self.d_in, self.dtype)
            self.harvest(held, writer, "harvest heldout")
            writer.close(fsync=True)
            with open(tmp / "heldout_windows.npy", "rb") as f:
                os.fsync(f.fileno())
            manifest = {"key": json.loads(json.dumps(self.key, default=str)), "layout": "shards",
                        "info": {"d_in": self.d_in, "dtype": self.dtype, "per_window": self.per,
                                 "n_heldout": len(held) * self.per},
                        "files": {n: _file_entry(tmp / n) for n in ("heldout.npy", "heldout_windows.npy")},
                        "train_start": stream.position.to_dict(), "shards": []}
            _write_manifest(tmp, manifest)
            os.replace(tmp, self.folder)
        except BaseException:  # a refused config or an interrupt: leave no partial entry behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def _cut(self, manifest: dict, keep: int) -> dict:
        manifest = {**manifest, "shards": manifest["shards"][:keep]}
        _write_manifest(self.folder, manifest)
        self._sweep(manifest)
        return manifest

    def _extend(self, manifest: dict, need_windows: int) -> dict:
        """Harvest shards from where the last one stopped until need_windows; each is committed on its own."""
        have = train_windows(manifest)
        if have >= need_windows:
            return manifest
        shards = manifest["shards"]
        start = Position.from_dict(shards[-1]["end"] if shards else manifest["train_start"])
        stream = self.open_windows(start)
        tmp = self.root / f"{self.folder.name}.tmp{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            while have < need_windows:
                windows = stream.take(min(self.shard_windows, need_windows - have))
                if len(windows) == 0:
                    raise ConfigError(self.too_short(have, need_windows, True))
                i = len(manifest["shards"])
                name = f"train-{i:05d}"
                with naming(tmp / f"{name}.windows.npy"):
                    np.save(tmp / f"{name}.windows.npy", windows)
                writer = NpyWriter(tmp / f"{name}.npy", len(windows) * self.per, self.d_in, self.dtype)
                speed = self.harvest(windows, writer, f"harvest shard {i} ({have + len(windows):,} of "
                                                      f"{need_windows:,} windows)")
                writer.close(fsync=True)
                with open(tmp / f"{name}.windows.npy", "rb") as f:
                    os.fsync(f.fileno())
                files = {}
                for n in (f"{name}.npy", f"{name}.windows.npy"):
                    files[n] = _file_entry(tmp / n)
                    os.replace(tmp / n, self.folder / n)  # unlisted until the manifest below names it
                _fsync_dir(self.folder)
                shard = {"name": name, "windows": len(windows), "rows": len(windows) * self.per,
                         "end": stream.position.to_dict(), "tokens_per_s": round(speed), "files": files}
                manifest = {**manifest, "shards": [*manifest["shards"], shard]}
                _write_manifest(self.folder, manifest)
                have += len(windows)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"saeexp: activation cache {self.folder} holds {have * self.per:,} training tokens in "
              f"{len(manifest['shards'])} shards", file=sys.stderr, flush=True)
        return manifest


class ShardReader:
    """read(lo, hi, out): rows [lo, hi) of the entry's training (or held-out) rows into a float32 tensor.

    pread into `out` (or a staging array for 16-bit caches): the page cache serves repeated reads, but no
    page of the cache is mapped into this process, so its resident memory does not grow with the cache.
    """

    def __init__(self, folder: Path, files: list[tuple[str, int]], d_in: int, dtype: str):
        self.folder, self.d_in, self.dtype = Path(folder), d_in, dtype
        self.np_dtype = np.dtype(_NP[dtype])
        self.parts = []  # (first row, rows, path, data offset)
        row = 0
        for name, rows in files:
            path = self.folder / name
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
                offset = f.tell()
            if shape != (rows, d_in):
                raise ConfigError(f"activation cache file {path}: shape {shape}, expected {(rows, d_in)}")
            self.parts.append((row, rows, path, offset))
            row += rows
        self.n_rows = row

    def read(self, lo: int, hi: int, out: torch.Tensor) -> None:
        if not 0 <= lo <= hi <= self.n_rows:
            raise IndexError(f"rows [{lo}, {hi}) outside [0, {self.n_rows})")
        done = 0
        for first, rows, path, offset in self.parts:
            a, b = max(lo, first), min(hi, first + rows)
            if a >= b:
                continue
            dst = out[done:done + (b - a)]
            if self.dtype == "float32":
                stage = dst.numpy()  # straight into the caller's buffer
            else:
                stage = np.empty((b - a, self.d_in), self.np_dtype)
            fd = os.open(path, os.O_RDONLY)
            try:
                view, pos = stage.data.cast("B"), offset + (a - first) * self.d_in * self.np_dtype.itemsize
                while view.nbytes:
                    n = os.preadv(fd, [view], pos)
                    if n <= 0:
                        raise OSError(f"{path}: unexpected end of file at byte {pos}")
                    view, pos = view[n:], pos + n
            finally:
                os.close(fd)
            if self.dtype == "bfloat16":
                dst.copy_(torch.from_numpy(stage).view(torch.bfloat16))
            elif self.dtype == "float16":
                dst.copy_(torch.from_numpy(stage))
            done += b - a
