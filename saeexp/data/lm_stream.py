"""The streamed activations of an LMSource (`data.stream=true`): corpus windows -> model -> MixingBuffer.

Nothing is written to disk. The held-out windows are the corpus's first, as in the cache (same windows,
same harvest batches, so the same evaluation set); training windows follow them, stream_buffer_tokens /
stream_fills activations per fill. Each fill's first window is recorded as (pass over the corpus, Position),
so the checkpoint can say where the oldest fill in the buffer began: a resumed run reopens the corpus there
(skipping pieces, not tokenizing them) and re-harvests the buffer's fills (saeexp/data/mixing.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from saeexp.data.mixing import MixingBuffer
from saeexp.errors import ConfigError
from saeexp.lm.harvest import RowWriter
from saeexp.lm.windows import Position


class LMStream:
    """Training batches of `source` (an LMSource) harvested as training goes, and its held-out set."""

    def __init__(self, source):
        self.src, self.per, self.L = source, source.per_window, source.stream_fills
        self.fill_windows = max(1, math.ceil(source.stream_buffer_tokens / self.L / self.per))
        self.fill_rows = self.fill_windows * self.per
        # the run's length, when train() told the source (check_tokens): no fill past the last one it needs
        self.need_tokens: int | None = getattr(source, "_need_tokens", None)
        n_fills = None if self.need_tokens is None else max(1, math.ceil(self.need_tokens / self.fill_rows))
        self.buffer = MixingBuffer(self._fill, self.fill_rows, source.d_in, self.L, source.stream_overlap, n_fills)
        self.starts: dict[int, tuple[int, Position]] = {}  # fill -> (pass, Position of its first window)
        self.epoch_windows: int | None = None  # training windows in one pass over the corpus, once known
        self._ws = self._ws_fill = None  # the open window stream and the fill it is at
        self._ws_epoch = 0
        self._held_windows = self._held = self._train_start = None
        self._cuda_stream = None

    # --- the corpus --------------------------------------------------------------------------------------
    def _open(self) -> None:
        """The held-out windows (the corpus's first) and where the training windows start."""
        if self._held_windows is not None:
            return
        ws = self.src.window_stream()
        held = ws.take(self.src.n_heldout_windows)
        if len(held) < self.src.n_heldout_windows:
            raise ConfigError(self.src.too_short(len(held), self.src.n_heldout_windows, False))
        self._held_windows, self._train_start = held, ws.position
        self.starts.setdefault(0, (0, ws.position))
        if self._ws is None:
            self._ws, self._ws_fill, self._ws_epoch = ws, 0, 0

    def _take(self, n: int, fill: int) -> np.ndarray:
        """The next n training windows, starting the corpus over when a pass ends and data.epochs allows it."""
        got = [self._ws.take(n)]
        have = len(got[0])
        while have < n:  # this pass over the corpus is over
            if self.epoch_windows is None and self._ws_epoch == 0:
                self.epoch_windows = fill * self.fill_windows + have
            if not self.epoch_windows:
                raise ConfigError("data.corpus gives no training windows after the held-out ones; add text to "
                                  "data.corpus or lower data.heldout_tokens")
            if self._ws_epoch + 1 >= self.src.epochs:
                per_pass = self.epoch_windows * self.per
                need = self.need_tokens or 0
                raise ConfigError(
                    f"data.corpus gives {per_pass:,} training tokens per pass (after the held-out windows); "
                    f"train.tokens={need:,} needs more than data.epochs={self.src.epochs}: add text to data.corpus, "
                    f"or let it repeat with data.epochs={max(self.src.epochs + 1, math.ceil(need / per_pass))}")
            self._ws_epoch += 1
            self._ws = self.src.window_stream(self._train_start)
            more = self._ws.take(n - have)
            got.append(more)
            have += len(more)
        return np.concatenate(got) if len(got) > 1 else got[0]

    def _seek(self, k: int) -> None:
        """Put the window stream at fill k's first window (reopening at a recorded start, else walking)."""
        if k in self.starts:
            self._ws_epoch, pos = self.starts[k]
            self._ws, self._ws_fill = self.src.window_stream(pos), k
            return
        if self._ws_fill is None or self._ws_fill > k:
            j = max(i for i in self.starts if i <= k)
            self._ws_epoch, pos = self.starts[j]
            self._ws, self._ws_fill = self.src.window_stream(pos), j
        while self._ws_fill < k:  # no record (a checkpoint without one): tokenize forward, harvest nothing
            self._take(self.fill_windows, self._ws_fill)
            self._ws_fill += 1
            self.starts[self._ws_fill] = (self._ws_epoch, self._ws.position)

    def _fill(self, k: int, out_RD: Tensor) -> None:
        """Harvest fill k's windows into `out_RD` (called for fills in order, from one thread)."""
        self._open()
        if self._ws_fill != k:
            self._seek(k)
        windows = self._take(self.fill_windows, k)
        self._ws_fill = k + 1
        self.starts[k + 1] = (self._ws_epoch, self._ws.position)
        for old in [i for i in self.starts if i < k - 3 * self.L]:  # only the buffer's fills can be asked for
            del self.starts[old]
        if self.src.device.startswith("cuda") and self.buffer.overlap:
            # the model's kernels on their own CUDA stream, beside the SAE's steps on the default one
            if self._cuda_stream is None:
                self._cuda_stream = torch.cuda.Stream()
            with torch.cuda.stream(self._cuda_stream):
                self.src.harvest_windows(windows, RowWriter(out_RD), progress=False)
        else:
            self.src.harvest_windows(windows, RowWriter(out_RD), progress=False)

    # --- what the source serves ------------------------------------------------------------------------------
    def heldout_windows(self) -> np.ndarray:
        self._open()
        return self._held_windows

    def heldout(self) -> Tensor:
        """The held-out activations, harvested once per process (kept in memory, never written)."""
        if self._held is None:
            self.buffer.wait_idle()
            w = self.heldout_windows()
            out = torch.empty(len(w) * self.per, self.src.d_in)
            self.src.harvest_windows(w, RowWriter(out), "harvest heldout")
            self._held = out
        return self._held

    def batches(self, batch_size: int, seed: int, start: int):
        return self.buffer.batches(batch_size, seed, start)

    def state_dict(self, batches: int, batch_size: int) -> dict:
        """The fill whose round batch `batches` falls in, and where in the corpus that fill began."""
        k = self.buffer.schedule.locate(batches * batch_size)[0]
        state = {"fill": k, "fill_windows": self.fill_windows, "fills": self.L, "n_fills": self.buffer.schedule.n_fills,
                 "epoch_windows": self.epoch_windows}
        if k in self.starts:
            epoch, pos = self.starts[k]
            state.update({"epoch": epoch, "position": pos.to_dict()})
        return state

    def load_state_dict(self, state: dict) -> None:
        mine = (self.fill_windows, self.L, self.buffer.schedule.n_fills)
        theirs = (state.get("fill_windows"), state.get("fills"), state.get("n_fills"))
        if theirs != mine:
            raise ConfigError(f"the checkpoint's stream has (windows per fill, fills, fills in the run) {theirs}, this "
                              f"config {mine}: resume with the data.stream_* and train.tokens it was trained with")
        self.epoch_windows = state.get("epoch_windows")
        if "position" in state:
            self.starts[int(state["fill"])] = (int(state["epoch"]), Position.from_dict(state["position"]))

    def rates(self) -> dict:
        s = dict(self.buffer.stats)
        return {"harvest_tok_s": s["harvest_rows"] / s["harvest_s"] if s["harvest_s"] > 0 else None,
                "wait_s": s["wait_s"], "overlap": self.buffer.overlap}
