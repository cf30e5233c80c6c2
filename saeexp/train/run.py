"""`train(cfg)`: a plain function from a composed config to a trained, evaluated and saved SAE."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import saeexp.resolvers  # noqa: F401  (the config tree's ${times:...}, ${fraction_of:...})
from saeexp.checks import check_config
from saeexp.errors import ConfigError, TrainingDiverged
from saeexp.io import save_sae
from saeexp.redact import redact_text
from saeexp.report import score, summary, write_report
from saeexp.resample.callback import Resampling
from saeexp.sweep.series import coefficient_keys
from saeexp.train import init, target_l0
from saeexp.train.callbacks import RunCheckpoint, TokensProgressBar, verify_checkpoint
from saeexp.train.datamodule import ActivationDataModule
from saeexp.train.lock import RunLock
from saeexp.train.module import SAEModule


def _positive(name: str, value, minimum=1) -> int:
    if not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{name}={value!r}: expected a number >= {minimum}")
    return int(value)


def make(node, **kwargs):
    """hydra.utils.instantiate, but a ConfigError raised by a constructor surfaces as itself (one clear line)."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def penalty_config(cfg: DictConfig) -> dict:
    """The sparsity penalty's node: the loss group less its list of extra terms (`loss.extra`)."""
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    node.pop("extra", None)
    return node


def decoder_handling(cfg: DictConfig, penalty) -> dict:
    """`model.decoder_norm=auto`: the first handling the penalty declares (no penalty: unit); else nothing."""
    if cfg.model.get("decoder_norm") != "auto":
        return {}
    return {"decoder_norm": penalty.decoder_norms[0] if penalty is not None else "unit"}


def saved_model_config(cfg: DictConfig, sae) -> dict:
    """The model config a saved SAE carries: resolved, with the decoder handling `auto` became."""
    return {**OmegaConf.to_container(cfg.model, resolve=True), "decoder_norm": sae.decoder_norm}


def build(cfg: DictConfig, source=None):
    """Instantiate data source, SAE and loss terms from the config; checks every combination first."""
    t = cfg.train
    batch_size = _positive("train.batch_size", t.batch_size)
    steps = _positive("train.tokens", t.tokens) // batch_size
    if steps < 1:
        raise ConfigError(f"train.tokens={t.tokens}: fewer than one batch of train.batch_size={batch_size}")
    source = source or make(cfg.data)
    source.check_tokens(steps * batch_size)  # stream (issue 27): no silent repeats of the data
    penalty = make(penalty_config(cfg)) if cfg.loss.get("_target_") else None
    extra = [make(v) for v in (cfg.loss.get("extra") or {}).values() if v and v.get("_target_")]
    # train.target_l0 sets k on TopK variants; `model.decoder_norm=auto` becomes the penalty's handling
    sae = make(cfg.model, **target_l0.model_overrides(cfg), **decoder_handling(cfg, penalty))
    penalties = [penalty, *extra] if penalty is not None else extra
    for term in penalties:
        term.validate(sae)
    if sae.sparsity == "penalty" and not any(p.is_sparsity and p.coef > 0 for p in penalties):
        zero = [f"{k}=0" for k in coefficient_keys(cfg) if OmegaConf.select(cfg, k) == 0]
        raise ConfigError(f"model={type(sae).__name__} with {zero[0] if zero else 'no sparsity penalty'}: it would "
                          "learn no sparsity; expected a coefficient > 0 (loss=l1, loss.l1=2e-3)")
    resampler = make(cfg.resampler) if cfg.get("resampler") and cfg.resampler.get("_target_") else None
    if resampler is not None:
        resampler.validate(sae)
    return source, sae, penalties, resampler, batch_size, steps


def init_from_sample(cfg: DictConfig, source, sae) -> float:
    """The input scale and b_dec from a training sample, then the encoder-scale fit; returns the scale.

    Deterministic, so a resume recomputes the same.
    """
    sample = source.sample(cfg.train.init_sample_tokens, seed=cfg.seed)
    scale = init.input_scale(sample) if cfg.train.scale_inputs else 1.0
    with torch.no_grad():
        sample = sample * scale  # the space the SAE trains in: both inits below see it
        sae.b_dec.copy_(init.b_dec_init(cfg.train.b_dec_init, sample))
    if cfg.train.fit_encoder_scale:
        init.fit_encoder_scale(sae, sample)
    return scale


def prepare(cfg: DictConfig):
    """Seeded, from the config: (source, SAE initialised from a data sample, input scale, steps, SAEModule,
    ActivationDataModule, the callbacks the step needs: resampling), ready for `Trainer.fit` (what `train`
    runs; tests/test_step_pin.py too)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    source, sae, penalties, resampler, batch_size, steps = build(cfg)
    source.prepare()
    scale = init_from_sample(cfg, source, sae)
    module = make_module(cfg, sae, penalties, scale, steps, batch_size)
    step_callbacks = [Resampling(resampler)] if resampler is not None else []
    return source, sae, scale, steps, module, ActivationDataModule(source, batch_size, cfg.seed), step_callbacks


def make_module(cfg: DictConfig, sae, penalties, scale: float, steps: int, batch_size: int) -> SAEModule:
    """The LightningModule of a run: the SAE, its loss terms and the schedules, in steps."""
    tok = lambda n: int(n) // batch_size  # noqa: E731 - token counts to steps
    return SAEModule(
        sae, penalties, instantiate(cfg.optimizer), total_steps=steps, input_scale=scale,
        lr_warmup_steps=tok(cfg.train.lr_warmup_tokens), lr_decay_steps=tok(cfg.train.lr_decay_tokens),
        sparsity_warmup_steps=tok(cfg.train.sparsity_warmup_tokens), log_every=cfg.train.log_every,
        dead_window_tokens=cfg.train.dead_window_tokens,
        reuse_memory=cfg.train.get("reuse_memory", True), grad_clip=cfg.train.get("grad_clip"),
        target_l0=target_l0.controller(cfg, penalties, steps, tok(cfg.train.sparsity_warmup_tokens),
                                       tok(cfg.train.lr_decay_tokens)))


def train(cfg: DictConfig) -> dict:
    """Train (or resume, or return the finished result of) the run in `cfg.paths.run_dir`.

    One process at a time per run directory (saeexp.train.lock): a second one refuses with RunLocked.
    """
    check_config(cfg)  # also run by the CLI's guard before Hydra writes anything; here for direct callers
    run_dir = Path(cfg.paths.run_dir)
    with RunLock(run_dir):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    metrics_path = run_dir / "metrics.json"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    old_run_id = None
    if cfg.overwrite:
        if (run_dir / "mlflow_run_id").exists():  # its MLflow run is superseded: tagged orphaned below
            old_run_id = (run_dir / "mlflow_run_id").read_text().strip()
        for p in (metrics_path, ckpt, run_dir / "sae", run_dir / "mlflow_run_id"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    elif metrics_path.exists():
        result = json.loads(metrics_path.read_text())
        print(f"saeexp: run already finished in {run_dir} (overwrite=true to train again)\n  {summary(result)}")
        return result

    source, sae, scale, steps, module, dm, step_callbacks = prepare(cfg)
    batch_size = dm.batch_size

    from saeexp.tracking import log_config, make_logger

    if ckpt.exists():
        verify_checkpoint(ckpt)
    logger = make_logger(cfg, run_dir)
    log_config(logger, cfg, run_dir)
    if old_run_id and old_run_id != logger.run_id:
        from saeexp.tracking import mark_orphaned

        mark_orphaned(logger.experiment, old_run_id, f"overwritten by run {logger.run_id}")
    saver = RunCheckpoint(ckpt, cfg.train.checkpoint_every, cfg.train.log_every)
    # the step's own callbacks first: a resample happens before any checkpoint sees the weights
    callbacks = [*step_callbacks, saver, TokensProgressBar(batch_size)] + [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, max_steps=steps, logger=logger, callbacks=callbacks,
                                     default_root_dir=str(run_dir), enable_checkpointing=False)
    try:
        # weights_only: a checkpoint never unpickles code, whatever the torch version's default
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt.exists() else None, weights_only=True)
        # interrupted, or stopped early by a callback (preempted: saeexp.sweep.preemption): the checkpoint is
        # saved; the requeued job resumes
        if trainer.interrupted or trainer.global_step < steps:
            return {"interrupted": True, "step": trainer.global_step}
        saver.save(trainer)
    except Exception as e:  # any failure: the MLflow run says why (a SIGKILLed job cannot: saeexp-pareto reconciles)
        reason = str(e) if isinstance(e, (TrainingDiverged, ConfigError)) else f"{type(e).__name__}: {e}"
        logger.mark_failed(redact_text(reason))  # never raises: a store on a full disk must not hide `e`
        raise

    scalars, arrays = score(sae, source, scale)
    scalars.update({"steps": steps, "tokens": steps * batch_size, "input_scale": scale})
    coef = target_l0.settled_coef(cfg, list(module.terms), module.target_l0)
    if coef is not None:
        scalars["sparsity_coef"] = coef
    # the saved SAE takes raw activations: fold the scale into a copy of the weights
    import copy

    raw = copy.deepcopy(sae).cpu()
    raw.fold_input_scale(scale)
    save_sae(raw, run_dir / "sae", saved_model_config(cfg, raw),
             {"input_scale": scale, "d_in": sae.d_in, "d_sae": sae.d_sae,
              "data": OmegaConf.to_container(cfg.data, resolve=True), "run_dir": str(run_dir)})
    verdict = learning_verdict(scalars)
    if verdict is not None:
        scalars["learning"] = verdict
        logger.experiment.set_tag(logger.run_id, "saeexp.learning", verdict)
    result = write_report(scalars, arrays, run_dir, logger)
    logger.experiment.log_artifacts(logger.run_id, str(run_dir / "sae"), "sae")
    from saeexp.features.cli import dashboard, wanted

    if wanted(cfg, source):  # single data=lm runs: features.html (the model is already loaded for the CE eval)
        try:
            dashboard(raw, source, run_dir, logger.experiment, logger.run_id)
        except Exception as e:  # the SAE and its metrics are saved: a dashboard failure is reported, not fatal
            logger.experiment.set_tag(logger.run_id, "features_error", f"{type(e).__name__}: {e}"[:5000])
            print(f"saeexp: warning: no feature dashboard ({type(e).__name__}: {e}); "
                  f"`saeexp-features {run_dir}` retries")
    logger.finalize("success")
    print(f"saeexp: finished {steps} steps ({steps * batch_size:,} tokens) in {run_dir}\n  {summary(result)}\n"
          f"  MLflow: experiment '{cfg.logger.experiment_name}', run {logger.run_id} at "
          f"{redact_text(cfg.logger.tracking_uri)}\n"
          f"  SAE: {run_dir / 'sae'}  (saeexp.load_sae(path))")
    if verdict is not None:
        print(f"saeexp: warning: the run finished but did not learn ({verdict}); it is left out of Pareto "
              "frontiers (lower optimizer.lr or the sparsity coefficient)", file=sys.stderr)
    return result


def learning_verdict(scalars: dict) -> str | None:
    """`failed:<reason>` for a run that finished without learning, else None (the run stays FINISHED).

    FVU >= 1 on held-out data: the SAE reconstructs no better than the mean would (a loss that blew up while
    staying finite ends here too, e.g. optimizer.lr=1e6).
    """
    fvu = scalars.get("fvu")
    if fvu is None or fvu != fvu:
        return "failed:fvu_undefined"
    if fvu >= 1.0:
        return f"failed:fvu={fvu:.3g}>=1"
    return None
