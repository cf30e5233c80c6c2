"""A thin LightningDataModule over an `ActivationSource`, resumable at the exact batch."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from saeexp.data.base import ActivationSource
from saeexp.errors import ConfigError


class _Stream(IterableDataset):
    def __init__(self, source: ActivationSource, batch_size: int, seed: int, start: int, rank: int, world: int):
        self.source, self.batch_size, self.seed, self.start = source, batch_size, seed, start
        self.rank, self.world = rank, world

    def __iter__(self):
        if self.world == 1:
            return self.source.batches(self.batch_size, self.seed, self.start)
        return self.source.shard_batches(self.batch_size, self.seed, self.start, self.rank, self.world)


def stream_state(source: ActivationSource, batches: int, batch_size: int) -> dict:
    """Where a training stream stands after `batches` batches (checkpointed by single runs and pack members):
    the batch count and what else the source needs to continue exactly (issue 27: a streamed source's corpus
    position)."""
    return {"batches_consumed": batches, "source": source.state_dict(batches, batch_size)}


class ActivationDataModule(L.LightningDataModule):
    """Serves the source's training stream; its checkpointed state is the number of batches consumed (and, for a
    source that needs more to continue exactly, the source's own state: data.stream=true's corpus position).

    Data-parallel (trainer=ddp): `batch_size` is the global batch; each rank gets its shard of every one."""

    def __init__(self, source: ActivationSource, batch_size: int, seed: int):
        super().__init__()
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.start = 0

    def prepare_data(self) -> None:
        self.source.prepare()

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.batch_size % world:
            raise ConfigError(f"train.batch_size={self.batch_size} over {world} devices: expected a multiple of "
                              f"{world} (the global batch is split evenly)")
        # batches are made whole by the source; no workers: contiguous reads outrun the step by far
        return DataLoader(_Stream(self.source, self.batch_size, self.seed, self.start, rank, world),
                          batch_size=None)

    def state_dict(self) -> dict:
        # one batch per optimiser step, so the stream position is the global step
        return stream_state(self.source, self.trainer.global_step if self.trainer else self.start, self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state["batches_consumed"])
        self.source.load_state_dict(state.get("source") or {})  # stream (issue 27)
