"""Data-parallel training (`trainer=ddp`): the sums and selections over the ranks that share each global batch.

Under Lightning's DDP every rank steps on its own shard of each global batch, and DDP averages the gradients.
What a gradient average does not cover is made global here: which features fired, the L0 the target-L0
controller sees, BatchTopK's batch-level threshold, the denominator of a ratio over the batch (AuxK), the rows
the resampler keeps. Each helper is the identity unless a trainer has switched sharding on (SAEModule, for the
duration of a fit with more than one process), so an SAE used anywhere else (scoring on rank 0 after the fit,
a notebook, fine-tuning) never enters a collective that the other ranks would not join.

Every rank runs the same collectives in the same order (they follow the step, which is the same on all), and
the results are bitwise equal on every rank, so the state they decide (firing counters, the controller, the
threshold, the resampler's reservoir) stays identical without being broadcast.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

_world = 1  # ranks that share each global batch while a data-parallel fit runs; 1 otherwise


def world() -> int:
    """How many ranks share each global batch (1: one process, or outside a data-parallel fit)."""
    return _world


def shard_over(n: int) -> None:
    """From now on the helpers below reduce over the default process group's `n` ranks (1: switch them off)."""
    global _world
    if n > 1 and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == n):
        raise RuntimeError(f"shard_over({n}): no process group of {n} ranks is initialised")
    _world = n


def _reduced(t: Tensor, op) -> Tensor:
    if _world == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=op)
    return t


def all_sum(t: Tensor) -> Tensor:
    """The sum over ranks of `t` (a new tensor; `t` itself when not sharded)."""
    return _reduced(t, dist.ReduceOp.SUM)


def all_min(t: Tensor) -> Tensor:
    """The elementwise minimum over ranks of `t` (a new tensor; `t` itself when not sharded)."""
    return _reduced(t, dist.ReduceOp.MIN)


def any_rank(mask: Tensor) -> Tensor:
    """Elementwise OR over ranks of a bool tensor (which features fired on some token of the global batch)."""
    if _world == 1:
        return mask
    m = mask.to(torch.uint8)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m.bool()


def cat_ranks(t: Tensor) -> Tensor:
    """The 1-d tensors of every rank, concatenated in rank order (lengths may differ)."""
    if _world == 1:
        return t
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(_world)]
    dist.all_gather(sizes, n)
    lens = [int(s) for s in sizes]
    padded = t.new_zeros(max(lens))
    padded[:t.numel()] = t
    parts = [torch.empty_like(padded) for _ in range(_world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:k] for p, k in zip(parts, lens)])


def first_rows(x_BD: Tensor, r: int) -> Tensor:
    """The first `r` rows of the global batch, whose consecutive shards the ranks hold in rank order."""
    if _world == 1:
        return x_BD[:r]
    mine = x_BD[:min(r, x_BD.shape[0])].contiguous()  # a rank's share of the first r rows is a prefix of its own
    parts = [torch.empty_like(mine) for _ in range(_world)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)[:r]


def mean_ranks(t: Tensor) -> Tensor:
    """The mean over ranks (for logged values: the training logs report the global batch)."""
    return all_sum(t) / _world if _world > 1 else t


def launched_rank_zero() -> bool:
    """Whether this process is rank 0 of its run as its launcher started it, before any process group exists:
    Lightning's launcher re-runs the command for each further local rank with LOCAL_RANK set (and NODE_RANK per
    node), torchrun sets RANK, srun SLURM_PROCID (read in the order Lightning reads them). A plain command is 0."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", "0")) == 0
    return int(env.get("SLURM_PROCID", "0")) == 0
