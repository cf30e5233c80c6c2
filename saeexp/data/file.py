"""The user's own activations: a `.npy` (fp32/fp16) or `.safetensors` (fp32/fp16/bf16) array [n_tokens, d_in]."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from saeexp.data.base import ActivationSource, ChunkedReader
from saeexp.errors import ConfigError

NPY_DTYPES = (np.float32, np.float16)


def open_array(path: Path, key: str | None = None):
    """Return (read(lo, hi, out), n_rows, d_in) for a 2-D activation file, reading lazily."""
    if not path.exists():
        raise ConfigError(f"data.path={str(path)!r}: no such file (expected a .npy or .safetensors array "
                          "[n_tokens, d_in])")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise ConfigError(f"data.path={str(path)!r}: not a readable .npy array ({e})") from None
        if arr.dtype not in NPY_DTYPES:
            raise ConfigError(f"data.path={str(path)!r}: dtype {arr.dtype} is not supported in .npy; "
                              "expected float32 or float16 (save bf16 as .safetensors)")
        shape = arr.shape

        def read(lo, hi, out):
            out.numpy()[:] = arr[lo:hi]  # straight from the page cache into the buffer (converts fp16)
    elif path.suffix == ".safetensors":
        try:
            f = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"data.path={str(path)!r}: not a readable .safetensors file ({e})") from None
        keys = list(f.keys())
        if key is None:
            if len(keys) != 1:
                raise ConfigError(f"data.path={str(path)!r} holds tensors {keys}; set data.key to one of them")
            key = keys[0]
        if key not in keys:
            raise ConfigError(f"data.key={key!r}: not in {str(path)!r} (has {keys})")
        sl = f.get_slice(key)
        shape = tuple(sl.get_shape())

        def read(lo, hi, out):
            out.copy_(sl[lo:hi])
    else:
        raise ConfigError(f"data.path={str(path)!r}: expected a .npy or .safetensors file")
    if len(shape) != 2:
        raise ConfigError(f"data.path={str(path)!r}: array has shape {shape}; expected [n_tokens, d_in]")
    return read, shape[0], shape[1]


class FileSource(ActivationSource):
    """Activations from a file; the last `heldout_tokens` rows are the evaluation set, never trained on."""

    def __init__(self, path: str, d_in: int, key: str | None = None, heldout_tokens: int = 16384,
                 chunk_tokens: int = 16384, buffer_chunks: int = 16):
        self.path = Path(path).expanduser()
        self.d_in, self.key, self.heldout_tokens = d_in, key, heldout_tokens
        self.chunk_tokens, self.buffer_chunks = chunk_tokens, buffer_chunks
        self._reader = None

    def prepare(self) -> None:
        self._open()
        self._check_finite()

    def _check_finite(self) -> None:
        """One pass over the file before training: a NaN or inf row is named here, not found as a NaN loss later."""
        buf = torch.empty(min(self.chunk_tokens, self.n_rows), self.d_in)
        for lo in range(0, self.n_rows, buf.shape[0]):
            rows = buf[:min(buf.shape[0], self.n_rows - lo)]
            try:
                self._read(lo, lo + rows.shape[0], rows)
            except (OSError, ValueError, RuntimeError) as e:  # e.g. a file truncated after its header was read
                raise ConfigError(f"data.path={str(self.path)!r}: not readable at rows {lo}.. "
                                  f"({type(e).__name__}: {e})") from None
            bad = ~torch.isfinite(rows).all(dim=1)
            if bad.any():
                row = lo + int(bad.nonzero()[0])
                what = "NaN" if torch.isnan(buf[row - lo]).any() else "an infinite value"
                raise ConfigError(f"data.path={str(self.path)!r}: row {row} holds {what}; expected finite "
                                  "activations")

    def _open(self):
        if self._reader is None:
            read, n, d = open_array(self.path, self.key)
            if d != self.d_in:
                raise ConfigError(f"data.path={str(self.path)!r} has width {d}, but data.d_in={self.d_in}")
            if n <= self.heldout_tokens:
                raise ConfigError(f"data.path={str(self.path)!r} has {n} rows, not more than "
                                  f"data.heldout_tokens={self.heldout_tokens}")
            self._read, self.n_rows = read, n
            self._reader = ChunkedReader(read, n - self.heldout_tokens, d, self.chunk_tokens, self.buffer_chunks)
        return self._reader

    def heldout(self) -> Tensor:
        self._open()
        out = torch.empty(self.heldout_tokens, self.d_in)
        self._read(self.n_rows - self.heldout_tokens, self.n_rows, out)
        return out

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        return self._open().batches(batch_size, seed, start)

    def describe(self) -> dict:
        self._open()
        return {"path": str(self.path), "n_tokens": self.n_rows}
