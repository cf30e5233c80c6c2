"""Run the model over token windows, stopping at the hook's layer, and stream the activations to disk."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saeexp.errors import ConfigError
from saeexp.lm.model import read_point

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
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": descr, "fortran_order": False, "shape": (n_rows, d)})

    def write(self, x_ND: torch.Tensor) -> None:
        x = x_ND.detach().to(self.torch_dtype).contiguous()
        if self.dtype == "bfloat16":
            x = x.view(torch.int16)
        self.f.write(x.numpy().tobytes())
        self.rows += x.shape[0]

    def close(self) -> None:
        self.f.close()
        if self.rows != self.n_rows:
            raise RuntimeError(f"wrote {self.rows} rows, expected {self.n_rows}")


def open_npy(path: Path, dtype: str):
    """Memory-map a cache file (file-backed pages, never anonymous memory) as a torch-readable array."""
    arr = np.load(path, mmap_mode="r")
    return arr, (torch.bfloat16 if dtype == "bfloat16" else None)


@torch.inference_mode()
def harvest(bridge, hook: str, windows_WT: np.ndarray, first: int, writer: NpyWriter, d_in: int,
            batch_windows: int = 32, desc: str = "harvest") -> float:
    """Write the activations at `hook` of positions [first:] of every window; returns tokens/s."""
    name, stop = read_point(hook, getattr(bridge.cfg, "n_layers", None))
    got: list[torch.Tensor] = []

    def grab(act, hook):
        got.append(act)
        return act

    n, T = windows_WT.shape
    t0 = time.perf_counter()
    bar = tqdm(total=n * (T - first), unit="tok", unit_scale=True, desc=desc, mininterval=1.0)
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
