"""Where activations come from: one small interface, one class per source (`data=...`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor


class ActivationSource:
    """A stream of raw (unscaled) activations [tokens, d_in] plus a held-out set never trained on.

    `batches(batch_size, seed, start)` must be deterministic in (seed, batch index) so that a resumed
    run, starting at `start` batches already consumed, sees exactly what an uninterrupted run would.
    """

    d_in: int
    # --- capabilities, declared (an LM-backed source sets them): read by the report, yardstick and dashboards
    provides_model_eval: bool = False  # model_eval(sae, input_scale): metrics with the model in the loop
    provides_windows: bool = False     # windows(split): the token windows behind the activations (dashboards)

    def prepare(self) -> None:
        """Build whatever must exist on disk (caches); safe to call from many processes at once."""

    def heldout(self) -> Tensor:
        """The fixed evaluation activations, float32 [n_eval, d_in]."""
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> Tensor:
        """About n training activations (for the input-scale estimate and the b_dec init)."""
        return next(iter(self.batches(n, seed=seed + 7919, start=0)))

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        """An endless, deterministic stream of training batches, float32 [batch_size, d_in]."""
        raise NotImplementedError

    # --- data parallelism (trainer=ddp; added for multi-device training) -----------------------------------------
    def shard_batches(self, batch_size: int, seed: int, start: int, rank: int, world: int) -> Iterator[Tensor]:
        """Rank `rank`'s share of every global batch of `batches(batch_size, ...)`: rows [rank b, (rank + 1) b),
        b = batch_size / world. So the ranks together step on exactly the batches one process would (each
        rank reads whole batches and keeps its slice). A source that can make its share without the rest (a
        stream whose ranks each run their part of the model) overrides this; a run then equals one process's
        only if the shards, in rank order, still make up the global batch."""
        b = batch_size // world
        for batch in self.batches(batch_size, seed, start):
            yield batch[rank * b:(rank + 1) * b]

    def truth(self) -> Tensor | None:
        """Ground-truth unit-norm feature directions [n_features, d_in], when known (synthetic data)."""
        return None

    def describe(self) -> dict:
        """Facts worth recording with a run (sizes, files)."""
        return {}


class ChunkedReader:
    """Training batches from a [n, d_in] array-like: contiguous chunks into a reused buffer, shuffled in RAM.

    Random rows from a memory map are as slow as training on a cold disk; contiguous reads are far faster
    (docs/benchmarks.md). Memory is bounded by the buffer, not by the array.
    `read(lo, hi, out)` copies rows [lo, hi) into the float32 tensor `out`.
    """

    def __init__(self, read, n_rows: int, d_in: int, chunk_rows: int = 16384, buffer_chunks: int = 16):
        self.read, self.n_rows, self.d_in = read, n_rows, d_in
        self.chunk_rows = max(1, min(chunk_rows, n_rows))
        self.n_chunks = max(1, n_rows // self.chunk_rows)
        self.buffer_chunks = max(1, min(buffer_chunks, self.n_chunks))
        self.buffer_rows = self.buffer_chunks * self.chunk_rows

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        per_buffer = max(1, self.buffer_rows // batch_size)
        buf = torch.empty(self.buffer_rows, self.d_in)  # reused for every buffer fill
        b = start // per_buffer  # buffer index: everything below is a function of (seed, b)
        skip = start % per_buffer
        while True:
            rng = np.random.default_rng([seed, b])
            # which chunks: a fresh permutation of chunks per pass over the data
            per_pass = self.n_chunks // self.buffer_chunks
            pass_idx, slot = divmod(b, per_pass)
            order = np.random.default_rng([seed, pass_idx, 1]).permutation(self.n_chunks)
            chunks = np.sort(order[slot * self.buffer_chunks:(slot + 1) * self.buffer_chunks])
            for j, c in enumerate(chunks):
                lo = int(c) * self.chunk_rows
                self.read(lo, lo + self.chunk_rows, buf[j * self.chunk_rows:(j + 1) * self.chunk_rows])
            perm = torch.from_numpy(rng.permutation(self.buffer_rows))
            for i in range(skip, per_buffer):
                idx = perm[(i * batch_size) % self.buffer_rows:][:batch_size]
                if idx.numel() < batch_size:  # batch larger than what is left of the buffer: wrap around
                    idx = torch.cat([idx, perm[:batch_size - idx.numel()]])
                # a new tensor per batch: the trainer may hold one batch while fetching the next
                yield torch.index_select(buf, 0, idx)
            skip = 0
            b += 1
