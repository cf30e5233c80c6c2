"""Run the model over token windows, stopping at the hook's layer, and stream the activations to disk."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saeexp.errors import ConfigError
from saeexp.lm.model import read_point
from saeexp.util.files import naming

CACHE_DTYPES = ("float32", "float16", "bfloat16")


class NpyWriter:
    """Append rows to a .npy file of known shape without holding it in memory.

    bfloat16 has no numpy dtype: its bits are stored as uint16 (the manifest says bfloat16).
    """

    def __init__(self, path: Path, n_rows: int, d: int, dtype: str):
        if dtype not in CACHE_DTYPES:
            raise ConfigError(f"data.cache_dtype={dtype!r}: expected one of {CACHE_DTYPES}")
        self.dtype, self.n_rows, self.d, self.rows = dtype, n_rows, d, 0
        self.torch_dtype = getattr(torch, dtype)
        descr = np.dtype(np.uint16 if dtype == "bfloat16" else dtype).str
        self.path = path
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": descr, "fortran_order": False, "shape": (n_rows, d)})

    def write(self, x_ND: torch.Tensor) -> None:
        x = x_ND.detach().to(self.torch_dtype).contiguous()
        if self.dtype == "bfloat16":
            x = x.view(torch.int16)
        with naming(self.path):
            self.f.write(x.numpy().tobytes())
        self.rows += x.shape[0]

    def close(self, fsync: bool = False) -> None:
        with naming(self.path):
            if fsync:  # the data on disk before anything that lists the file (a manifest) is written
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
        if self.rows != self.n_rows:
            raise RuntimeError(f"wrote {self.rows} rows, expected {self.n_rows}")


class RowWriter:
    """Rows into a preallocated float32 tensor (a slot of the streaming buffer), the NpyWriter interface."""

    def __init__(self, out_ND: torch.Tensor):
        self.out, self.rows = out_ND, 0

    def write(self, x_ND: torch.Tensor) -> None:
        self.out[self.rows:self.rows + x_ND.shape[0]].copy_(x_ND)
        self.rows += x_ND.shape[0]


@torch.inference_mode()
def harvest(bridge, hook: str, windows_WT: np.ndarray, first: int, writer, d_in: int,
            batch_windows: int = 32, desc: str = "harvest", progress: bool = True) -> float:
    """Write the activations at `hook` of positions [first:] of every window to `writer` (NpyWriter,
    RowWriter), `batch_windows` windows per forward from the first window on; returns tokens/s.

    The same windows in the same batches give the same activations: the cache and the stream harvest
    the held-out windows alike, and a resumed stream re-harvests a fill as the first run did."""
    name, stop = read_point(hook, getattr(bridge.cfg, "n_layers", None))
    got: list[torch.Tensor] = []

    def grab(act, hook):
        got.append(act)
        return act

    n, T = windows_WT.shape
    t0 = time.perf_counter()
    bar = tqdm(total=n * (T - first), unit="tok", unit_scale=True, desc=desc, mininterval=1.0,
               disable=not progress)
    with bridge.hooks(fwd_hooks=[(name, grab)]):
        for i in range(0, n, batch_windows):
            ids = torch.from_numpy(windows_WT[i:i + batch_windows]).long()
            bridge(ids, return_type=None, stop_at_layer=stop)
            act = got.pop()
            got.clear()
            if act.dim() != 3:
                raise ConfigError(f"data.hook={hook!r} gives activations of shape {tuple(act.shape)}; expected "
                                  "[batch, position, width] (a residual, MLP or attention-output hook)")
            act = act[:, first:, :]
            if act.shape[-1] != d_in:
                raise ConfigError(f"data.d_in={d_in}, but hook {hook!r} gives activations of width "
                                  f"{act.shape[-1]}")
            writer.write(act.reshape(-1, act.shape[-1]))
            bar.update(act.shape[0] * act.shape[1])
    bar.close()
    return n * (T - first) / max(time.perf_counter() - t0, 1e-9)
