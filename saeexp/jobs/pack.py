"""`train_pack(plans)`: a sweep's runs that share one activation stream, trained together in one process.

Each plan stays a run of its own: its run directory (locked), MLflow run, checkpoint, resume, final scoring,
saved SAE and dashboard are those `saeexp.jobs.train.train` gives it alone; only the batches are shared
(saeexp.train.pack). `group` splits a sweep's plans into packs that can share a stream, and `memory_split`
splits a pack that would not fit a memory budget.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch

from saeexp.errors import ConfigError
from saeexp.jobs.train import Prepared, _discard_finished, _finish, failure_reason, init_from_sample, make_module
from saeexp.plan import RunPlan
from saeexp.tracking.logger import log_config, open_run
from saeexp.tracking.store import mark_orphaned
from saeexp.train import pack
from saeexp.train.callbacks import verify_checkpoint
from saeexp.train.lock import RunLock, RunLocked
from saeexp.train.preemption import _submitit_handler, mark_preempted, preempt_signal
from saeexp.train.stop import Stopped
from saeexp.util.redact import redact_text
from saeexp.util.slurm import at_time_limit


def stream_key(plan: RunPlan) -> str:
    """What runs must agree on to step on the same batches: the data, the seed (it orders the batches), batch
    size, length, trainer and matmul precision. Everything else (model, penalty, width, schedules) is per run."""
    s = plan.schedule
    return json.dumps({"data": plan.data_config, "seed": plan.seed, "batch_size": s.batch_size, "steps": s.steps,
                       "trainer": plan.trainer_config, "matmul": s.matmul_precision}, sort_keys=True, default=str)


def group(plans: list[RunPlan]) -> list[list[int]]:
    """Indices of `plans` in packs that can share a stream, in first-seen order."""
    packs: dict[str, list[int]] = {}
    for i, p in enumerate(plans):
        packs.setdefault(stream_key(p), []).append(i)
    return list(packs.values())


def member_bytes(plan: RunPlan) -> int:
    """A member's memory while training: weights, gradients and Adam's two moments (4 copies of the
    parameters), plus the step's activations, about 6 tensors of batch x d_sae, in the training precision."""
    params = sum(p.numel() for p in plan.sae.parameters())
    width = int(getattr(plan.sae, "d_sae", 0))
    item = 8 if str(plan.trainer_config.get("precision")).startswith("64") else 4
    return item * (4 * params + 6 * plan.schedule.batch_size * width)


def memory_split(indices: list[int], plans: list[RunPlan], budget_bytes: float) -> list[list[int]]:
    """Split a pack, in order, into packs whose members' memory sums to at most the budget (a member over the
    budget alone is its own pack)."""
    out: list[list[int]] = [[]]
    used = 0
    for i in indices:
        need = member_bytes(plans[i])
        if out[-1] and used + need > budget_bytes:
            out.append([])
            used = 0
        out[-1].append(i)
        used += need
    return out


def _progress(batch_size: int, start: int, every_s: float = 30.0):
    """A line every `every_s` seconds: step, tokens/s, live members (a pack has no Lightning progress bar)."""
    last = [time.perf_counter()]

    def show(step: int, total: int, elapsed: float, members) -> None:
        now = time.perf_counter()
        if now - last[0] < every_s and step < total:
            return
        last[0] = now
        live = sum(m.failed is None for m in members)
        rate = f", {batch_size * (step - start) / elapsed:,.0f} tok/s" if elapsed > 0 else ""
        print(f"saeexp: pack step {step}/{total}{rate}, {live}/{len(members)} SAEs training", flush=True)

    return show


def train_pack(plans: list[RunPlan]) -> list[dict | BaseException]:
    """Train the plans (one stream: `stream_key` equal) together; returns each one's result or its error.

    Finished runs are reported as they are; the others are locked, resumed from their checkpoints and trained.
    Members whose checkpoints stand at different steps train as consecutive packs, one per starting step.
    A signal checkpoints every member and raises `Stopped`, as a single run does.
    """
    keys = {stream_key(p) for p in plans}
    if len(keys) != 1:
        raise ValueError("train_pack: the plans do not share one stream (saeexp.jobs.pack.group splits them)")
    dirs = [_run_dir(p) for p in plans]
    pack.check_trainer(plans[0].trainer_config)
    results: list[dict | BaseException | None] = [None] * len(plans)
    with contextlib.ExitStack() as locks:
        todo = []
        for i, p in enumerate(plans):
            try:  # a run another process holds is that run's error; the others train
                locks.enter_context(RunLock(dirs[i]))
            except RunLocked as e:
                results[i] = e
                continue
            old = _discard_finished(dirs[i]) if p.overwrite else None
            done = dirs[i] / "metrics.json"
            if not p.overwrite and done.exists():
                results[i] = json.loads(done.read_text())
                print(f"saeexp: run already finished in {p.run_dir} (overwrite=true to train again)")
                continue
            todo.append((i, old))
        if todo:
            _train_members(plans, todo, results)
    return [r if r is not None else RuntimeError("not trained") for r in results]


def _run_dir(plan: RunPlan) -> Path:
    if plan.run_dir is None:
        raise ConfigError("paths.run_dir is not set: expected each run's directory (set by the `saeexp` command)")
    return plan.run_dir


def _train_members(plans: list[RunPlan], todo: list[tuple[int, str | None]], results: list) -> None:
    first = plans[todo[0][0]]
    torch.set_float32_matmul_precision(first.schedule.matmul_precision)
    source = first.source
    source.prepare()
    sample = source.sample(first.init.sample_tokens, seed=first.seed)  # the members' init sample, drawn once
    members, prepared, loggers = {}, {}, {}
    for i, old_run_id in todo:
        p = plans[i]
        p.source = source
        L.seed_everything(p.seed, workers=True, verbose=False)
        spec_sample = sample if p.init.sample_tokens == first.init.sample_tokens else None
        scale = init_from_sample(p.init, p.seed, source, p.sae, spec_sample)
        module = make_module(p, scale)
        s = p.schedule
        run_dir = _run_dir(p)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if ckpt.exists():
            verify_checkpoint(ckpt)
        logger = open_run(p.tracking, run_dir)
        log_config(logger, p.tracking, run_dir)
        if old_run_id and old_run_id != logger.run_id:
            mark_orphaned(logger.experiment, old_run_id, f"overwritten by run {logger.run_id}")
        members[i] = pack.Member(str(run_dir), module, ckpt, logger, s.log_every, s.checkpoint_every,
                                 resampler=p.resampler)
        prepared[i], loggers[i] = Prepared(scale, module, None, []), logger
    pack.place(list(members.values()), first.trainer_config)
    data_states = {i: m.load() for i, m in members.items()}
    for i, m in members.items():
        if m.resumed_at:
            print(f"saeexp: {m.name}: resumed at step {m.resumed_at}", flush=True)
            loggers[i].experiment.set_tag(loggers[i].run_id, "saeexp.resumed_at_step", str(m.resumed_at))
    by_start: dict[int, list[int]] = {}
    for i, m in members.items():
        by_start.setdefault(m.resumed_at, []).append(i)
    for start in sorted(by_start):
        idx = by_start[start]
        try:
            _fit_pack(plans, idx, members, data_states, loggers, source)
        except Stopped:
            raise
        except Exception as err:  # the stream itself failed (the data, the device): each member still training fails
            for i in idx:
                if members[i].failed is None:
                    members[i].failed = err
    for i, m in members.items():
        p = plans[i]
        if m.failed is not None:
            e = m.failed
            reason = failure_reason(e)
            loggers[i].mark_failed(redact_text(reason))
            print(f"saeexp: error: {p.run_dir}: {reason}", file=sys.stderr, flush=True)
            results[i] = e
            continue
        try:
            results[i] = _finish(p, prepared[i], loggers[i], _run_dir(p))
        except Exception as e:  # noqa: BLE001 - one run's scoring failing must not lose the others' results
            loggers[i].mark_failed(redact_text(failure_reason(e)))
            results[i] = e


def _fit_pack(plans, idx: list[int], members: dict, data_states: dict, loggers: dict, source) -> None:
    """One stream over the members in `idx` (all at one starting step); a signal checkpoints and stops them."""
    first = plans[idx[0]]
    group_members = [members[i] for i in idx]
    pack.restore_source(source, data_states[idx[0]])
    submitit = _submitit_handler(preempt_signal())  # None unless submitit runs this job
    preempt = (preempt_signal(),) if submitit is not None else ()
    show = _progress(first.schedule.batch_size, members[idx[0]].resumed_at)
    with pack.PackSignals(preempt) as signals:
        step = pack.fit(group_members, source, first.schedule.batch_size, first.seed, first.trainer_config,
                        signals, show)
    # the final checkpoint, as a single run writes it, or the one a signal's stop keeps
    saved = pack.save_all(group_members, source, step, first.schedule.batch_size)
    if signals.signum is None:
        return
    stopped = Stopped(signals.signum, step, all(saved.values()))
    # submitit's preemption signal, or SLURM's SIGTERM at the time limit: mark each run and let submitit requeue
    if preempt and (signals.signum == preempt[0] or (signals.signum == signal.SIGTERM and at_time_limit())):
        for i in idx:
            if members[i].failed is None:
                mark_preempted(loggers[i].experiment, loggers[i].run_id, step)
        print(f"saeexp: pack preempted at step {step}; {len(saved)} checkpoints saved, requeueing", flush=True)
        submitit(preempt[0], None)  # dumps the resubmission, requeues and exits
    for i in idx:
        if members[i].failed is None:
            loggers[i].mark_killed(stopped.name, f"{stopped} (packed with {len(idx)} runs)")
    raise stopped


def budget_bytes(trainer_config: dict, memory_gb: float | None) -> float:
    """The memory a pack may use: `memory_gb` if set; else 80% of the GPU's memory, or half the machine's
    available memory on CPU (the stream's buffer and the model share it)."""
    if memory_gb is not None:
        return float(memory_gb) * 2 ** 30
    if pack.device_of(trainer_config).type == "cuda":
        return 0.8 * torch.cuda.get_device_properties(0).total_memory
    avail = _meminfo("MemAvailable")
    return 0.5 * avail if avail else math.inf


def _meminfo(key: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024.0
    return 0.0
