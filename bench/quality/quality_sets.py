"""The quality benchmark's synthetic sets: ground-truth superposition data written once to a cache.

Each set is a `SyntheticSource` (power-law firing, magnitudes bounded away from zero, co-occurring pairs,
a little noise) plus the training recipe issue 8 fixes for it. The data file holds `file_tokens` training
rows then `heldout` rows (saeexp's `data=file` holds out the last rows; SAELens gets the same file), all
multiplied by one constant so that E||x|| = sqrt(d_in): the scale both libraries' coefficient conventions
assume, so neither has to normalise its inputs. Next to it: the truth directions and the held-out rows'
true activations (for MCC), and spec.json. Written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from saeexp.data.synthetic import SyntheticSource

SETS = {
    1: {
        "data": dict(d_in=64, n_features=512, max_p=0.13, alpha=0.5, magnitude="exponential",
                     mean_magnitude=1.0, min_magnitude=0.5, noise=0.02, groups=32, group_size=2,
                     group_p=0.005, seed=0),
        "width": 1024, "tokens": 3_600_000, "file_tokens": 3_600_000,
    },
    2: {
        "data": dict(d_in=256, n_features=4096, max_p=0.053, alpha=0.5, magnitude="exponential",
                     mean_magnitude=1.0, min_magnitude=0.5, noise=0.01, groups=128, group_size=2,
                     group_p=0.005, seed=0),
        # 20M training tokens as 5 passes over 4M rows (4 GiB of fp32 instead of 20)
        "width": 8192, "tokens": 20_000_000, "file_tokens": 4_000_000,
    },
}
RECIPE = dict(batch=4096, lr=4e-3, decay_frac=0.2, sparsity_warmup_frac=0.05, heldout=16384)
BLOCK_VALUES = 2 ** 25  # rows generated at once x n_features: ~128 MiB per temporary


def cache_root() -> Path:
    return Path(os.environ.get("SAEEXP_CACHE", Path.home() / ".cache" / "saeexp")) / "bench_quality"


def build(set_id: int) -> dict:
    """Write set `set_id` once (or find it written); returns its spec with the file paths."""
    # `format` names this file's way of generating: bump it when that changes, so old caches are not reused
    spec = {**SETS[set_id], "heldout": RECIPE["heldout"], "set": set_id, "format": 2}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / f"set{set_id}-{key}"
    if not (folder / "spec.json").exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write(spec, tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    spec = json.loads((folder / "spec.json").read_text())
    return {**spec, "dir": str(folder), "path": str(folder / "data.npy")}


def _write(spec: dict, folder: Path) -> None:
    src = SyntheticSource(**spec["data"], heldout_tokens=spec["heldout"])
    d, n_train, n_eval = src.d_in, spec["file_tokens"], spec["heldout"]
    gen = torch.Generator().manual_seed(1234)
    block = max(1024, BLOCK_VALUES // src.n_features)
    codes, x = src.draw(block, torch.Generator().manual_seed(99))  # a sample for the scale only
    scale = float(d ** 0.5 / x.norm(dim=1).mean())
    out = np.lib.format.open_memmap(folder / "data.npy", mode="w+", dtype=np.float32, shape=(n_train + n_eval, d))
    for lo in range(0, n_train, block):
        n = min(block, n_train - lo)
        out[lo:lo + n] = (src.draw(n, gen)[1] * scale).numpy()
        print(f"  set {spec['set']}: {lo + n:,} / {n_train:,} rows", end="\r", flush=True)
    print()
    held = torch.Generator().manual_seed(4321)  # held out: its own stream
    codes, x = map(torch.cat, zip(*(src.draw(min(block, n_eval - lo), held) for lo in range(0, n_eval, block))))
    out[n_train:] = (x * scale).numpy()
    out.flush()
    del out
    np.save(folder / "heldout_codes.npy", (codes * scale).numpy())
    np.save(folder / "truth.npy", src.truth().numpy())
    l0 = float((codes > 0).sum(1).float().mean())
    zero = float(((codes > 0).sum(1) == 0).float().mean())
    (folder / "spec.json").write_text(json.dumps({**spec, "scale": scale, "true_l0": l0, "all_zero_frac": zero},
                                                 indent=2))


def heldout(spec: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [heldout, d_in] raw, true activations [heldout, n_features], truth directions [n_features, d_in])."""
    data = np.load(spec["path"], mmap_mode="r")
    x = torch.from_numpy(np.array(data[-spec["heldout"]:]))
    codes = torch.from_numpy(np.load(Path(spec["dir"]) / "heldout_codes.npy"))
    truth = torch.from_numpy(np.load(Path(spec["dir"]) / "truth.npy"))
    return x, codes, truth
