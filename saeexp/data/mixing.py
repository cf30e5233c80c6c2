"""A shuffle buffer over activations computed as training goes (`data.stream=true`), resumable by arithmetic.

The training windows are cut into fills of `fill_rows` activations, harvested in order (fill k: windows
[k F, (k + 1) F)). The buffer holds `fills` (L) fills. Each fill's rows are permuted (seed, k) and split into
L parts; part p of fill k is served in round max(0, k - L + 1 + p). So round r >= 1 serves one part of each
of fills r .. r + L - 1, fill_rows rows in all, shuffled together (seed, r): each batch mixes every window in
the buffer, a fill is used over L rounds, and each round frees one fill's slot for the next (a refill of 1/L
of the buffer as it drains, as SAELens' mixing buffer and dictionary_learning's ActivationBuffer refill when
half is served). Round 0 serves the parts due at or before it: fill 0 whole, fill 1 less one part, ...
Batch i is rows [i * batch_size, (i + 1) * batch_size) of the rounds laid end to end.

Unlike a buffer that keeps a random share of its rows for ever (a row of SAELens' buffer may survive any
number of refills), no row outlives L rounds. So the state at batch i is a function of the seed and fills
r .. r + L - 1 only: a resumed run re-harvests those L fills (one buffer's worth, whatever the run's length)
and continues exactly as the uninterrupted run would. Memory: L fills (L + 1 when the next fill is harvested
in the background while the SAE trains on the current round).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from saeexp.data.base import fill_batches


class FillSchedule:
    """Which parts of which fills each round serves, and where each row of the stream falls: no data here.

    n_fills: the run's last fill, when its length is known (None: endless). No fill past it is harvested;
    the last L - 1 rounds then serve the parts left of the fills in the buffer (they mix fewer fills, as
    round 0 does), so a run harvests less than one fill more than it trains on.
    """

    def __init__(self, fill_rows: int, fills: int, n_fills: int | None = None):
        if fill_rows < 1 or fills < 1 or (n_fills is not None and n_fills < 1):
            raise ValueError("fill_rows, fills and n_fills must be >= 1")
        self.fill_rows, self.L, self.n_fills = fill_rows, fills, n_fills
        self.bounds = [p * fill_rows // fills for p in range(fills + 1)]
        # rounds 1 .. n_full serve one part of L fills each: fill_rows rows
        self.n_full = None if n_fills is None else max(0, n_fills - fills)

    def parts(self, r: int) -> list[tuple[int, int]]:
        """(fill, part) pairs served in round r, fill ascending."""
        if r == 0:  # the parts due at or before round 0: fill k < L serves parts 0 .. L-1-k
            pairs = [(k, p) for k in range(self.L) for p in range(self.L - k)]
        else:
            pairs = [(k, r - k + self.L - 1) for k in range(r, r + self.L)]
        return [(k, p) for k, p in pairs if self.n_fills is None or k < self.n_fills]

    def fills_of(self, r: int) -> range:
        return range(r, r + self.L if self.n_fills is None else min(r + self.L, self.n_fills))

    def rows(self, r: int) -> int:
        return sum(self.bounds[p + 1] - self.bounds[p] for _, p in self.parts(r))

    def start(self, r: int) -> int:
        """Rows of the stream served before round r."""
        if r == 0:
            return 0
        full = r - 1 if self.n_full is None else min(r - 1, self.n_full)
        return self.rows(0) + full * self.fill_rows + sum(self.rows(q) for q in range(full + 1, r))

    def locate(self, row: int) -> tuple[int, int]:
        """(round, offset in it) of stream row `row`."""
        first = self.rows(0)
        if row < first:
            return 0, row
        q, off = divmod(row - first, self.fill_rows)
        if self.n_full is None or q < self.n_full:
            return q + 1, off
        assert self.n_fills is not None  # n_full is set only with it
        r, off = self.n_full + 1, row - self.start(self.n_full + 1)
        while r < self.n_fills:  # the last rounds, smaller
            if off < self.rows(r):
                return r, off
            off -= self.rows(r)
            r += 1
        raise IndexError(f"row {row} is past the stream's end ({self.n_fills} fills)")


class MixingBuffer:
    """Batches from activations `fill(k, out)` writes (fill k's fill_rows rows into `out`, fills in order).

    overlap: harvest the next fill in a background thread while the SAE trains on the current round (on a
    GPU the model's forward and the SAE's steps then run at once; on a CPU the two compete for the same cores,
    so the default there is to harvest in the training thread, exactly harvest-then-train).
    """

    def __init__(self, fill: Callable[[int, Tensor], None], fill_rows: int, d_in: int, fills: int = 4,
                 overlap: bool = False, n_fills: int | None = None):
        self.schedule = FillSchedule(fill_rows, fills, n_fills)
        self.fill_fn, self.fill_rows, self.d_in, self.overlap = fill, fill_rows, d_in, overlap
        self.n_slots = fills + (1 if overlap else 0)
        self.store: Tensor | None = None  # [n_slots * fill_rows, d_in], allocated on first use
        self.tags = [-1] * self.n_slots  # which fill each slot holds
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="saeexp-harvest") if overlap else None
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self.stats = {"harvest_rows": 0, "harvest_s": 0.0, "wait_s": 0.0}  # read by the progress bar
        self._lock = threading.Lock()

    @property
    def memory_bytes(self) -> int:
        """The buffer's activations, whatever the run's length: n_slots x fill_rows x d_in float32."""
        return self.n_slots * self.fill_rows * self.d_in * 4

    # --- fills ---------------------------------------------------------------------------------------------
    def _storage(self) -> Tensor:
        if self.store is None:
            self.store = torch.empty(self.n_slots * self.fill_rows, self.d_in)
        return self.store

    def _slot_rows(self, k: int) -> Tensor:
        s = k % self.n_slots
        return self._storage()[s * self.fill_rows:(s + 1) * self.fill_rows]

    def _run_fill(self, k: int) -> None:
        t0 = time.perf_counter()
        self.tags[k % self.n_slots] = -1  # being overwritten
        self.fill_fn(k, self._slot_rows(k))
        self.tags[k % self.n_slots] = k
        with self._lock:
            self.stats["harvest_rows"] += self.fill_rows
            self.stats["harvest_s"] += time.perf_counter() - t0

    def _prefetch(self, k: int) -> None:
        if self._pool is not None and k not in self._pending and self.tags[k % self.n_slots] != k:
            self._pending[k] = self._pool.submit(self._run_fill, k)

    def _ensure(self, fills) -> None:
        """Make every fill in `fills` resident (in order), counting the time training waits for them."""
        t0 = time.perf_counter()
        for k in fills:
            if k in self._pending:
                self._pending.pop(k).result()
            elif self.tags[k % self.n_slots] != k:
                if self._pool is not None:  # one thread runs every fill: the corpus is read in order
                    self._pool.submit(self._run_fill, k).result()
                else:
                    self._run_fill(k)
        with self._lock:
            self.stats["wait_s"] += time.perf_counter() - t0

    def _perm(self, seed: int, k: int) -> np.ndarray:
        if (seed, k) not in self._perms:
            if len(self._perms) > 4 * self.schedule.L:
                self._perms.clear()
            self._perms[(seed, k)] = np.random.default_rng([seed, k]).permutation(self.fill_rows)
        return self._perms[(seed, k)]

    def _round_index(self, seed: int, r: int) -> Tensor:
        """Rows of `store` served by round r, in serving order."""
        b = self.schedule.bounds
        parts = [self._perm(seed, k)[b[p]:b[p + 1]] + (k % self.n_slots) * self.fill_rows
                 for k, p in self.schedule.parts(r)]
        rows = np.concatenate(parts)
        return torch.from_numpy(rows[np.random.default_rng([seed, r, 1]).permutation(len(rows))])

    # --- what the source serves -----------------------------------------------------------------------------
    def sample(self, n: int, seed: int) -> Tensor:
        """n rows drawn from the first buffer's fills (they stay resident: round 0 serves them).

        The whole first buffer, not the fewest fills that hold n rows: the input scale and the b_dec init then
        see as many documents as a batch of round 0 mixes (a resumed run harvests this buffer once more)."""
        m = len(self.schedule.fills_of(0))
        self._ensure(range(m))
        rows = np.random.default_rng([seed, 7919]).choice(m * self.fill_rows, min(n, m * self.fill_rows),
                                                          replace=False)
        idx = np.sort(rows)
        idx = (idx // self.fill_rows % self.n_slots) * self.fill_rows + idx % self.fill_rows
        return self._storage().index_select(0, torch.from_numpy(idx))

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        """Batches from batch `start` on (the last one may be short when the schedule's n_fills ends it)."""
        sched = self.schedule
        r, row = sched.locate(start * batch_size)
        carry = None
        while sched.n_fills is None or r < sched.n_fills:
            self._ensure(sched.fills_of(r))
            if sched.n_fills is None or r + sched.L < sched.n_fills:
                self._prefetch(r + sched.L)  # into the slot of fill r - 1, served out in round r - 1
            # a batch begun in this round and ended in the next is a copy, so this round's oldest slot can be
            # refilled
            carry = yield from fill_batches(lambda take: self._storage().index_select(0, take),
                                            self._round_index(seed, r), row, carry, batch_size)
            r, row = r + 1, 0
        if carry is not None:
            yield carry

    def wait_idle(self) -> None:
        """Let a background harvest finish: the model's hooks are per module, so a forward in another thread
        (the held-out harvest, the CE evaluation) must not run beside it."""
        for k in list(self._pending):
            self._pending[k].result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
