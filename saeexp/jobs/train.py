"""`train(plan)`: a run plan (saeexp.build.plan_run) to a trained, evaluated and saved SAE in its run directory."""
from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from saeexp.errors import ConfigError, TrainingDiverged
from saeexp.io import save_sae
from saeexp.jobs.features import dashboard
from saeexp.plan import Init, RunPlan
from saeexp.report import verdict as verdicts
from saeexp.report.score import score, summary, write_report
from saeexp.resample.callback import Resampling
from saeexp.tracking.logger import log_config, open_run
from saeexp.tracking.store import mark_orphaned
from saeexp.train import init, target_l0
from saeexp.train.callbacks import RunCheckpoint, TokensProgressBar, verify_checkpoint
from saeexp.train.datamodule import ActivationDataModule
from saeexp.train.lock import RunLock
from saeexp.train.module import SAEModule
from saeexp.train.pack import is_member_checkpoint
from saeexp.train.preemption import time_limit_requeue
from saeexp.train.stop import StopOnSignal, Stopped
from saeexp.util import ranks
from saeexp.util.redact import redact_text


@dataclass
class Prepared:
    """A plan made ready for `Trainer.fit`: the SAE initialised from data, its module, data and step callbacks."""

    input_scale: float
    module: SAEModule
    datamodule: ActivationDataModule | None  # None in a pack: its members share one stream (saeexp.train.pack)
    step_callbacks: list


def init_from_sample(spec: Init, seed: int, source, sae, sample=None) -> float:
    """The input scale and b_dec from a training sample, then the encoder-scale fit; returns the scale.

    Deterministic, so a resume recomputes the same. `sample`: the source's sample already drawn (a pack's
    members share it).
    """
    sample = source.sample(spec.sample_tokens, seed=seed) if sample is None else sample
    scale = init.input_scale(sample) if spec.scale_inputs else 1.0
    with torch.no_grad():
        sample = sample * scale  # the space the SAE trains in: both inits below see it
        sae.b_dec.copy_(init.b_dec_init(spec.b_dec_init, sample))
    if spec.fit_encoder_scale:
        init.fit_encoder_scale(sae, sample)
    return scale


def make_module(plan: RunPlan, input_scale: float) -> SAEModule:
    """The LightningModule of a run: the SAE, its loss terms and the schedules, in steps."""
    s = plan.schedule
    ctl = target_l0.controller(s.target_l0, plan.sae.sparsity_control, s.steps, s.sparsity_warmup_steps)
    short = target_l0.budget_warning(ctl, s.steps)
    if short and ranks.launched_rank_zero():
        print(short, file=sys.stderr)
    return SAEModule(plan.sae, plan.penalties, plan.optimizer, total_steps=s.steps, input_scale=input_scale,
                     lr_warmup_steps=s.lr_warmup_steps, lr_decay_steps=s.lr_decay_steps,
                     sparsity_warmup_steps=s.sparsity_warmup_steps, log_every=s.log_every,
                     dead_window_tokens=s.dead_window_tokens, reuse_memory=s.reuse_memory, grad_clip=s.grad_clip,
                     target_l0=ctl)


def prepare(plan: RunPlan) -> Prepared:
    """Seeded: the data prepared (a cache built), the SAE initialised from a sample, the module and data module
    ready for `Trainer.fit` (what `train` runs; tests/test_step_equivalence.py too)."""
    L.seed_everything(plan.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(plan.schedule.matmul_precision)
    plan.source.prepare()
    scale = init_from_sample(plan.init, plan.seed, plan.source, plan.sae)
    step_callbacks = [Resampling(plan.resampler)] if plan.resampler is not None else []
    return Prepared(scale, make_module(plan, scale),
                    ActivationDataModule(plan.source, plan.schedule.batch_size, plan.seed), step_callbacks)


def train(plan: RunPlan) -> dict:
    """Train (or resume, or return the finished result of) the run in `plan.run_dir`.

    One process at a time per run directory (saeexp.train.lock): a second one refuses with RunLocked.
    Data-parallel (trainer=ddp), rank 0 is that process: it holds the lock and the MLflow run, writes the
    checkpoint and the results; the other ranks only step (`_train_rank`).
    """
    if plan.run_dir is None:
        raise ConfigError("paths.run_dir is not set: expected the run's directory (set by the `saeexp` command; "
                          "composing the config yourself, pass paths.run_dir=DIR)")
    if not ranks.launched_rank_zero():
        return _train_rank(plan, plan.run_dir)
    with RunLock(plan.run_dir):
        return _train(plan, plan.run_dir)


def _discard_finished(run_dir: Path) -> str | None:
    """`overwrite=true`: remove the results and checkpoint; returns the MLflow run id they were logged to."""
    old = (run_dir / "mlflow_run_id").read_text().strip() if (run_dir / "mlflow_run_id").exists() else None
    for p in (run_dir / "metrics.json", run_dir / "checkpoints" / "last.ckpt", run_dir / "sae",
              run_dir / "mlflow_run_id"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return old


def _train(plan: RunPlan, run_dir: Path) -> dict:
    metrics_path, ckpt = run_dir / "metrics.json", run_dir / "checkpoints" / "last.ckpt"
    old_run_id = _discard_finished(run_dir) if plan.overwrite else None
    if not plan.overwrite and metrics_path.exists():
        result = json.loads(metrics_path.read_text())
        print(f"saeexp: run already finished in {run_dir} (overwrite=true to train again)\n  {summary(result)}")
        return result

    if ckpt.exists():
        verify_checkpoint(ckpt)
        if is_member_checkpoint(ckpt):  # the `saeexp` command resumes it as a pack of one (saeexp.cli.train)
            raise ConfigError(f"{str(ckpt)!r} was written by a packed sweep: resume it with saeexp.jobs.pack."
                              "train_pack([plan]) (what the `saeexp` command does)")
    ready = prepare(plan)
    logger = open_run(plan.tracking, run_dir)
    log_config(logger, plan.tracking, run_dir)
    if old_run_id and old_run_id != logger.run_id:  # its MLflow run is superseded
        mark_orphaned(logger.experiment, old_run_id, f"overwritten by run {logger.run_id}")
    try:
        trainer, saver, stop = _fit(plan, ready, run_dir, logger)
        stopped = stop.stopped()
        if stopped is not None:  # SIGTERM/SIGINT: checkpointed at the step's end; the CLI says so and exits
            if time_limit_requeue(stopped, logger):  # ... unless SLURM's time limit sent it: requeued, as preempted
                return {"interrupted": True, "step": stopped.step}
            logger.mark_killed(stopped.name, str(stopped))
            raise stopped
        # interrupted, or stopped early by a callback (preempted: saeexp.train.preemption): the checkpoint is
        # saved; the requeued job resumes
        if trainer.interrupted or trainer.global_step < plan.schedule.steps:
            return {"interrupted": True, "step": trainer.global_step}
        saver.save(trainer)  # data-parallel: every rank takes part, rank 0 writes
    except Stopped:
        raise
    except Exception as e:  # any failure: the MLflow run says why (a SIGKILLed job cannot: saeexp-pareto reconciles)
        logger.mark_failed(redact_text(failure_reason(e)))  # never raises: a store on a full disk must not hide `e`
        raise
    return _finish(plan, ready, logger, run_dir)


def failure_reason(e: BaseException) -> str:
    """The `failure_reason` a failed run is tagged with: a user error's own line, else the exception's type too."""
    return str(e) if isinstance(e, (TrainingDiverged, ConfigError)) else f"{type(e).__name__}: {e}"


def _fit(plan: RunPlan, ready: Prepared, run_dir: Path, logger) -> tuple[L.Trainer, RunCheckpoint, StopOnSignal]:
    """`Trainer.fit`, resuming from the run's checkpoint if there is one; returns the trainer, its checkpoint
    saver and its signal callback (what the caller decides from: finished, interrupted or stopped)."""
    s, ckpt = plan.schedule, run_dir / "checkpoints" / "last.ckpt"
    saver, stop = RunCheckpoint(ckpt, s.checkpoint_every, s.log_every), StopOnSignal()
    # the step's own callbacks first: a resample happens before any checkpoint sees the weights
    callbacks = [*ready.step_callbacks, saver, stop, TokensProgressBar(s.batch_size), *plan.callbacks]
    trainer: L.Trainer = plan.make_trainer(max_steps=s.steps, logger=logger, callbacks=callbacks,
                                           default_root_dir=str(run_dir), enable_checkpointing=False)
    # the module in the precision it trains in before a checkpoint is restored into it: Lightning restores before
    # it converts, so 64-true's float64 weights would pass through the float32 ones and resume rounded (no-op
    # for mixed precision)
    trainer.strategy.precision_plugin.convert_module(ready.module)
    # weights_only: a checkpoint never unpickles code, whatever the torch version's default
    trainer.fit(ready.module, datamodule=ready.datamodule, ckpt_path=str(ckpt) if ckpt.exists() else None,
                weights_only=True)
    return trainer, saver, stop


def _train_rank(plan: RunPlan, run_dir: Path) -> dict:
    """A data-parallel rank > 0: the same preparation and fit as rank 0, on its shard of every batch, with no
    lock, no MLflow run and nothing written (Lightning writes checkpoints on rank 0 only); rank 0 scores and saves.

    It starts after rank 0 took the lock and settled `overwrite` (Lightning's launcher re-runs the command for it
    from rank 0's `Trainer.fit`), so it sees the checkpoint rank 0 resumes from."""
    if not plan.overwrite and (run_dir / "metrics.json").exists():
        return {"finished": True}  # rank 0 prints the result and trains nothing
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        verify_checkpoint(ckpt)
    ready = prepare(plan)
    trainer, saver, stop = _fit(plan, ready, run_dir, logger=False)
    # rank 0 decides alike from the same global state (a signal on any rank stops all: StopOnSignal)
    if stop.stopped() is not None or trainer.interrupted or trainer.global_step < plan.schedule.steps:
        return {"interrupted": True, "step": trainer.global_step}
    saver.save(trainer)  # the final checkpoint is a collective: rank 0 writes it
    return {"rank": trainer.global_rank, "step": trainer.global_step}


def _finish(plan: RunPlan, ready: Prepared, logger, run_dir: Path) -> dict:
    """Score on held-out data, save the SAE (raw activations in), report to MLflow, draw the dashboard."""
    sae, source, scale, s = plan.sae, plan.source, ready.input_scale, plan.schedule
    scalars, arrays = score(sae, source, scale)
    scalars.update({"steps": s.steps, "tokens": s.steps * s.batch_size, "input_scale": scale})
    coef = target_l0.settled_coef(list(ready.module.terms), ready.module.target_l0)
    if coef is not None:
        scalars["sparsity_coef"] = coef
    raw = copy.deepcopy(sae).cpu()  # the saved SAE takes raw activations: fold the scale into a copy
    raw.fold_input_scale(scale)
    save_sae(raw, run_dir / "sae", {**plan.model_config, "decoder_norm": raw.decoder_norm},
             {"input_scale": scale, "d_in": sae.d_in, "d_sae": sae.d_sae, "data": plan.data_config,
              "run_dir": str(run_dir)}, variant=plan.variant)
    scalars["dense_l0"] = verdicts.dense_l0(arrays["density"])
    verdict = verdicts.judge(scalars, sae.d_in, sae.d_sae)
    if verdict is not None:
        scalars["learning"] = verdict
        logger.experiment.set_tag(logger.run_id, "saeexp.learning", verdict)
    result = write_report(scalars, arrays, run_dir, logger)
    logger.experiment.log_artifacts(logger.run_id, str(run_dir / "sae"), "sae")
    _dashboard(plan, raw, run_dir, logger)
    logger.finalize("success")
    print(f"saeexp: finished {s.steps} steps ({s.steps * s.batch_size:,} tokens) in {run_dir}\n  {summary(result)}\n"
          f"  MLflow: experiment '{plan.tracking.experiment}', run {logger.run_id} at "
          f"{redact_text(plan.tracking.uri)}\n"
          f"  SAE: {run_dir / 'sae'}  (saeexp.load_sae(path))")
    if verdict is not None:
        c, true_l0 = plan.control, source.describe().get("expected_l0")
        print(verdicts.warning(verdict, (c.name, c.value, c.keys), sae.d_in, scalars.get("l0"), true_l0),
              file=sys.stderr)
    elif miss := target_l0.miss_warning(ready.module.target_l0, scalars.get("l0")):
        print(miss, file=sys.stderr)  # (a verdict's own line already says that the target was missed)
    return result


def _dashboard(plan: RunPlan, raw_sae, run_dir: Path, logger) -> None:
    """features.html of a single data=lm run (the model is already loaded for the CE evaluation)."""
    source = plan.source
    if not (plan.dashboard and source.provides_windows):
        return
    if not source.provides_model_eval:  # data.model_eval=false: this run never loads the model
        print("saeexp: no feature dashboard (data.model_eval=false: no model for the unembedding); "
              "`saeexp-features RUN` builds it")
        return
    try:
        dashboard(raw_sae, source, run_dir, logger.experiment, logger.run_id)
    except Exception as e:  # the SAE and its metrics are saved: a dashboard failure is reported, not fatal
        logger.experiment.set_tag(logger.run_id, "features_error", f"{type(e).__name__}: {e}"[:5000])
        print(f"saeexp: warning: no feature dashboard ({type(e).__name__}: {e}); "
              f"`saeexp-features {run_dir}` retries")
