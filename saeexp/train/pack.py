"""A pack: several SAEs trained on one activation stream, each batch read (or harvested) once for all of them.

Each member is one run's `SAEModule` with its own optimiser, LR schedule, sparsity warm-up, target-L0
controller, resampler, checkpoint and logger; per batch each member takes exactly the step a single run takes
(saeexp.train.step, in Lightning's order: re-warm, zero_grad, forward and losses, backward, the SAE's hook and
clipping, the optimiser, the SAE's hook, the LR schedule, then the resampler and the checkpoint), so a member
equals its run trained alone. This loop is written out instead of running Lightning's: Lightning's fit loop
steps one module's optimisers and stops everything on the first error, while a pack must step N independent
optimisers and let one member fail (FAILED, with its reason) while the others go on.

A member's checkpoint (`<run dir>/checkpoints/last.ckpt`) holds what a single run's holds: the module's state,
optimiser, LR schedule, resampler, step and the stream position. A pack resumes from these files or from a
single run's Lightning checkpoint, and a single run resumes a member's file as a pack of one.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from saeexp.errors import ConfigError, StorageError, TrainingDiverged
from saeexp.train.callbacks import verify_checkpoint, weights_healthy
from saeexp.train.datamodule import stream_state
from saeexp.train.memory import release_freed_memory, reuse_freed_memory
from saeexp.train.module import SAEModule
from saeexp.train.step import after_optimizer_step, before_optimizer_step, make_optimizer, step_losses
from saeexp.util.files import temp_name

FORMAT = "saeexp-pack-member/1"  # the `format` key of a member's checkpoint
PRECISIONS = {"32-true": torch.float32, "32": torch.float32, "64-true": torch.float64, "64": torch.float64,
              "bf16-mixed": torch.float32}


def is_member_checkpoint(path: Path) -> bool:
    """Whether `path` is a pack member's checkpoint (not a single run's Lightning checkpoint)."""
    if not Path(path).exists():
        return False
    verify_checkpoint(path)  # a file that holds more than weights is refused (one line) before anything reads it
    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return isinstance(ck, dict) and ck.get("format") == FORMAT


def device_of(trainer_config: dict) -> torch.device:
    """The one device a pack trains on, from the trainer's accelerator."""
    acc = str(trainer_config.get("accelerator", "cpu"))
    if acc == "cpu":
        return torch.device("cpu")
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if acc == "auto":
        return torch.device("cpu")
    raise ConfigError(f"trainer.accelerator={acc}: a packed sweep trains on cpu or gpu")


def check_trainer(trainer_config: dict) -> None:
    """Refuse (one line) what a pack cannot run: several devices, or a precision it does not implement."""
    devices, nodes = trainer_config.get("devices", 1), trainer_config.get("num_nodes", 1)
    if devices not in (1, "1", "auto", None) or nodes not in (1, None):
        raise ConfigError(f"trainer.devices={devices}, trainer.num_nodes={nodes}: a packed sweep trains on one "
                          "device (trainer=cpu or trainer=gpu); data-parallel packs are not supported")
    precision = str(trainer_config.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: a packed sweep supports {', '.join(PRECISIONS)}")


@dataclass
class Member:
    """One run of the pack: its module, optimiser, schedule, resampler, checkpoint path and logger."""

    name: str                       # its run directory, for messages
    module: SAEModule
    ckpt: Path
    logger: Any                     # .log_metrics(dict, step); None: not logged
    check_every: int                # steps between divergence checks (train.log_every)
    checkpoint_every: int
    resampler: Any = None
    optimizer: Any = None
    scheduler: Any = None
    failed: Exception | None = None
    resumed_at: int = 0

    def __post_init__(self):
        self.optimizer = make_optimizer(self.module.optimizer_factory, self.module.sae)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.module.lr_factor)

    @property
    def steps(self) -> int:
        return self.module.total_steps

    # --- checkpoints -------------------------------------------------------------------------------------
    def save(self, step: int, data_state: dict) -> bool:
        """Write the checkpoint atomically, unless the weights are unhealthy; returns whether it wrote."""
        if not weights_healthy(self.module):
            return False
        state = {"format": FORMAT, "global_step": step, "state_dict": self.module.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "resampler": self.resampler.state_dict() if self.resampler is not None else None,
                 "data": data_state}
        tmp = temp_name(self.ckpt)
        try:
            self.ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, self.ckpt)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write checkpoint {str(tmp)!r}: {e.strerror or e} at step {step}") from None
        return True

    def load(self) -> dict | None:
        """Restore from the checkpoint if there is one (a member's or a single run's); returns its data state."""
        if not self.ckpt.exists():
            return None
        ck = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        if ck.get("format") == FORMAT:
            opt, sched, res, data = ck["optimizer"], ck["scheduler"], ck["resampler"], ck["data"]
        else:  # a single run's Lightning checkpoint: the same states under Lightning's keys
            opt, sched = ck["optimizer_states"][0], ck["lr_schedulers"][0]
            res = next((v for k, v in ck.get("callbacks", {}).items() if k.startswith("Resampling")), None)
            data = ck.get("ActivationDataModule") or {"batches_consumed": ck["global_step"]}
        self.module.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(sched)
        if self.resampler is not None and res is not None:
            self.resampler.load_state_dict(res)
        self.resumed_at = int(ck["global_step"])
        return data

    # --- one step, as SAEModule under Lightning's automatic optimisation takes it -------------------------
    def step(self, batch_BD: torch.Tensor, step: int, autocast) -> None:
        m, opt = self.module, self.optimizer
        if self.resampler is not None:  # batch start: the re-warm scales the lr the schedule set
            f = self.resampler.lr_factor(step)
            if f != 1.0:
                for group in opt.param_groups:
                    group["lr"] *= f
        opt.zero_grad(set_to_none=True)
        with autocast():
            x_BD, out, terms = step_losses(m.sae, m.terms, batch_BD, step, m.recipe)
            loss = sum(terms.values())
            bad = ~torch.isfinite(loss.detach())
            m.first_bad_step.copy_(torch.where(bad & (m.first_bad_step < 0), step, m.first_bad_step))
            if self.logger is not None and (step % m.log_every == 0 or step == m.total_steps - 1):
                logs = m.step_logs(x_BD, out, terms, loss, opt.param_groups[0]["lr"], step)
                values = torch.stack([v.detach().float().reshape(()).to(x_BD.device) for v in logs.values()])
                self.logger.log_metrics(dict(zip(logs, values.tolist())), step=step)
        loss.backward()
        before_optimizer_step(m.sae, m.recipe)
        opt.step()
        after_optimizer_step(m.sae)
        self.scheduler.step()
        if self.resampler is not None:  # batch end, before the checkpoint (as in a single run)
            view = SimpleNamespace(sae=m.sae, total_steps=m.total_steps, optimizers=lambda: opt)
            self.resampler.observe(view, x_BD, step)
            self.resampler.maybe_resample(view, step)

    def check(self, done: int) -> None:
        """The divergence guard at a single run's check steps."""
        if done % self.check_every == 0 or done == self.steps:
            bad = int(self.module.first_bad_step)
            if bad >= 0:
                kept = str(self.ckpt) if self.ckpt.exists() else "(none yet)"
                raise TrainingDiverged(f"loss is not finite at step {bad}; stopped, and kept the last good "
                                       f"checkpoint {kept}")


class PackSignals:
    """SIGTERM/SIGINT (and submitit's preemption signal, when submitit runs the job) recorded during the loop;
    the loop checkpoints every member at the step's end and stops (saeexp.train.stop does the same for one run)."""

    def __init__(self, extra: tuple = ()):
        self.signals = (signal.SIGTERM, signal.SIGINT, *extra)
        self.signum: int | None = None
        self._old: dict = {}

    def _note(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now (checkpoints are written by rename)
                sys.exit(128 + signum)
            return
        self.signum = signum

    def __enter__(self):
        for s in self.signals:
            self._old[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _dtype(trainer_config: dict) -> torch.dtype:
    return PRECISIONS[str(trainer_config.get("precision", "32-true"))]


def place(members: list[Member], trainer_config: dict) -> None:
    """Each member's module on the pack's device in the precision it trains in, before a checkpoint is restored
    into it (a 64-true checkpoint must not pass through float32 weights; the optimiser's restored state follows
    the parameters' device as it loads)."""
    device, dtype = device_of(trainer_config), _dtype(trainer_config)
    for m in members:
        m.module.to(device=device, dtype=dtype)


def _autocast(trainer_config: dict, device: torch.device):
    if str(trainer_config.get("precision")) == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def fit(members: list[Member], source, batch_size: int, seed: int, trainer_config: dict,
        signals: PackSignals, progress=None) -> int:
    """Step every live member on each batch of one stream until all reach their steps, a signal arrives or none
    is left; returns the step reached. A member that fails is set aside with its error (`Member.failed`)."""
    device = device_of(trainer_config)
    autocast = _autocast(trainer_config, device)
    starts = {m.resumed_at for m in members}
    if len(starts) != 1:
        raise ValueError(f"a pack's members must start at one step, got {sorted(starts)}")
    step = starts.pop()
    dtype = _dtype(trainer_config)
    if any(m.module.reuse_memory for m in members):  # what SAEModule.on_fit_start does for a single run
        reuse_freed_memory()
    for m in members:
        if m.resampler is not None:
            m.resampler.to(device)
    total = max(m.steps for m in members)
    batches: Iterator[torch.Tensor] = source.batches(batch_size, seed, step)
    t0 = time.perf_counter()
    while step < total and any(m.failed is None for m in members):
        batch = next(batches).to(device=device, dtype=dtype)
        done = step + 1
        data_state = None
        for m in members:
            if m.failed is not None or step >= m.steps:
                continue
            try:
                m.step(batch, step, autocast)
                m.check(done)
                if m.checkpoint_every and done % m.checkpoint_every == 0:
                    data_state = data_state or stream_state(source, done, batch_size)
                    m.save(done, data_state)
            except Exception as e:  # noqa: BLE001 - this member's error fails this member: the others go on
                m.failed = e
        step = done
        if progress is not None:
            progress(step, total, time.perf_counter() - t0, members)
        if signals.signum is not None and step < total:
            break
    release_freed_memory()  # as SAEModule.on_fit_end: the members' scoring allocates in other sizes
    return step


def save_all(members: list[Member], source, step: int, batch_size: int) -> dict[str, bool]:
    """Checkpoint every live member at `step` (the end, or a signal's stop); returns {name: saved}."""
    state = stream_state(source, step, batch_size)
    return {m.name: m.save(step, state) for m in members if m.failed is None}


def restore_source(source, data_state: dict | None) -> None:
    """Before the stream starts: the source's own state (a streamed source's corpus position)."""
    if data_state:
        source.load_state_dict(data_state.get("source") or {})
