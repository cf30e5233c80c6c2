"""Callbacks: atomic resumable checkpoints, the divergence guard, a progress bar with tokens/s."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from saeexp.errors import ConfigError, StorageError, TrainingDiverged
from saeexp.util import ranks
from saeexp.util.files import temp_name


def verify_checkpoint(path: Path) -> None:
    """Refuse, before resuming, a checkpoint that is unreadable or holds anything but tensors and containers:
    loading with weights_only=True never runs code that a planted or downloaded file carries."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # torch names the first class or function it refused
        what = f" (it calls or builds {found.group(1)})" if found else ""
        raise ConfigError(f"{str(path)!r}: refused to resume from it: it holds pickled objects that are not "
                          f"weights{what}; overwrite=true trains this run again") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ConfigError(f"{str(path)!r}: not a readable checkpoint ({type(e).__name__}); overwrite=true trains "
                          "this run again") from None


def weights_healthy(module) -> bool:
    """Whether a module's weights may be checkpointed: no non-finite loss seen and every SAE weight finite."""
    if int(module.first_bad_step) >= 0:
        return False
    return all(torch.isfinite(p).all() for p in module.sae.parameters())


class RunCheckpoint(Callback):
    """Keep `<run dir>/checkpoints/last.ckpt`: written to a temporary name and renamed, never with NaN weights.

    It holds model, optimiser, LR schedule, loop state and (through the data module) the stream position,
    so a resumed run ends where an uninterrupted one would.
    """

    def __init__(self, path: Path, every_n_steps: int, check_every: int):
        self.path, self.every, self.check_every = Path(path), every_n_steps, check_every

    def healthy(self, module) -> bool:
        return weights_healthy(module)

    def save(self, trainer) -> bool:
        """Save now if the weights are healthy; return whether it saved.

        Data-parallel: every rank calls it at the same step (the weights, hence `healthy`, are the same on all);
        Lightning writes the file on rank 0 only, which alone renames it.
        """
        if not self.healthy(trainer.lightning_module):
            return False
        tmp = temp_name(self.path)  # unique per writer
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(tmp), weights_only=False)  # the full state (optimiser, loops): resumable
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except OSError as e:  # disk full or read-only: drop the partial file, keep the last good checkpoint
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            kept = f"kept the last good checkpoint {str(self.path)!r}" if self.path.exists() else "no checkpoint yet"
            raise StorageError(f"cannot write checkpoint {str(tmp)!r}: {e.strerror or e} at step "
                               f"{trainer.global_step}; {kept}") from None
        return True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimiser steps taken so far
        if step % self.check_every == 0 or step == trainer.max_steps:
            bad = int(_first_over_ranks(module.first_bad_step))
            if bad >= 0:
                raise TrainingDiverged(f"loss is not finite at step {bad}; stopped, and kept the last good "
                                       f"checkpoint {self.path if self.path.exists() else '(none yet)'}")
        if self.every and step % self.every == 0:
            self.save(trainer)


def _first_over_ranks(step: torch.Tensor) -> torch.Tensor:
    """The earliest of the ranks' first bad steps (-1: none), so that all ranks stop together."""
    if ranks.world() == 1:
        return step
    never = torch.iinfo(step.dtype).max
    first = ranks.all_min(torch.where(step < 0, never, step))
    return torch.where(first == never, -1, first)


class TokensProgressBar(TQDMProgressBar):
    """The default bar plus tokens/s, L0 and FVU (the last two refresh at each log step).

    A source that computes activations while training (data.stream=true) adds its harvest rate, the training
    rate with the time spent waiting for the harvest taken out, and which of the two bounds the run."""

    def __init__(self, batch_size: int, refresh_rate: int = 10):
        super().__init__(refresh_rate=refresh_rate)
        self.batch_size = batch_size
        self._t0: float | None = None
        self._s0 = 0
        self._wait0 = 0.0

    @staticmethod
    def _rates(trainer) -> dict | None:
        source = getattr(getattr(trainer, "datamodule", None), "source", None)
        return source.rates() if source is not None else None

    def on_train_start(self, trainer, module) -> None:
        super().on_train_start(trainer, module)
        self._t0, self._s0 = time.perf_counter(), trainer.global_step
        self._wait0 = (self._rates(trainer) or {}).get("wait_s", 0.0)

    def get_metrics(self, trainer, module):
        m = super().get_metrics(trainer, module)
        m.pop("v_num", None)
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            tokens = (trainer.global_step - self._s0) * self.batch_size
            if dt > 0:
                m["tok/s"] = f"{tokens / dt:,.0f}"
            rates = self._rates(trainer)
            if rates and rates.get("harvest_tok_s") and tokens:
                busy = dt - (rates["wait_s"] - self._wait0)  # the SAE's own time: waits for the model taken out
                train = tokens / busy if busy > 0 else float("inf")
                m["harvest"] = f"{rates['harvest_tok_s']:,.0f}"
                m["train"] = f"{train:,.0f}"
                m["bound"] = "harvest" if rates["harvest_tok_s"] < train else "train"
        return m
