"""From a composed config to a typed run plan: the one place a training config is read, checked and built.

`plan_run(cfg)` checks the config (saeexp.build.checks), instantiates what its `_target_`s name (data source,
SAE, penalty and extra terms, resampler, optimiser, trainer, logger, callbacks), resolves the train.* keys
into a `Schedule` in steps, and derives the run's tracking identity (tags, series, params). Nothing below
this layer sees the config.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

import saeexp.build.resolvers  # noqa: F401  (the config tree's resolvers: a composed config needs them)
from saeexp.build.checks import check_config, coefficient_key
from saeexp.errors import ConfigError
from saeexp.plan import Control, Init, RunPlan, Schedule, Tracking
from saeexp.report import series
from saeexp.tracking.store import RUN_DIR_TAG, git_commit
from saeexp.util.redact import redact
from saeexp.util.slurm import slurm_job_id


def make(node, **kwargs):
    """hydra.utils.instantiate, with every argument converted to plain dicts and lists (nothing built from the config
    holds a piece of it), and a ConfigError raised by a constructor surfacing as itself (one clear line)."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def plain(node) -> dict:
    """A config node as a plain, resolved dict."""
    out = OmegaConf.to_container(node, resolve=True)
    if not isinstance(out, dict):
        raise ConfigError(f"expected a mapping, got {out!r}")
    return out


def source_from_config(data: dict):
    """An activation source from a plain (resolved) data config: what a sweep's harvest job, evaluation and
    dashboards build from a saved SAE's record."""
    return make(OmegaConf.create(data))


def _positive(name: str, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{name}={value!r}: expected a number >= {minimum}")
    return int(value)


def _target_l0(cfg: DictConfig) -> float | None:
    t = cfg.train.get("target_l0")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ConfigError(f"train.target_l0={t!r}: expected a number > 0 (or null)")
    return float(t)


def schedule(cfg: DictConfig) -> Schedule:
    """The train.* keys, token counts turned into steps."""
    t = cfg.train
    batch_size = _positive("train.batch_size", t.batch_size)
    tokens = _positive("train.tokens", t.tokens)
    steps = tokens // batch_size
    if steps < 1:
        raise ConfigError(f"train.tokens={t.tokens}: fewer than one batch of train.batch_size={batch_size}")
    to_steps = lambda n: int(n) // batch_size  # noqa: E731
    return Schedule(tokens=tokens, batch_size=batch_size, steps=steps,
                    lr_warmup_steps=to_steps(t.lr_warmup_tokens), lr_decay_steps=to_steps(t.lr_decay_tokens),
                    sparsity_warmup_steps=to_steps(t.sparsity_warmup_tokens),
                    grad_clip=None if t.get("grad_clip") is None else float(t.grad_clip),
                    dead_window_tokens=int(t.dead_window_tokens), log_every=_positive("train.log_every", t.log_every),
                    checkpoint_every=int(t.checkpoint_every), target_l0=_target_l0(cfg),
                    matmul_precision=str(t.matmul_precision), reuse_memory=bool(t.get("reuse_memory", True)))


def _model_kwargs(cfg: DictConfig, penalty, target: float | None) -> dict:
    """Constructor arguments the plan sets beside the model node: k from a target L0 on a k-controlled SAE,
    and `model.decoder_norm=auto` as the first handling the penalty declares (no penalty: unit)."""
    out: dict = {}
    if target is not None and getattr(get_class(cfg.model._target_), "sparsity_control", None) == "k":
        out["k"] = max(1, round(target))
        d_sae = cfg.model.get("d_sae")
        if isinstance(d_sae, int) and out["k"] > d_sae:  # named as typed: the user set no model.k
            raise ConfigError(f"train.target_l0={target:g}: a target L0 above model.d_sae={d_sae} (k is set from "
                              "it); expected a target <= d_sae")
    if cfg.model.get("decoder_norm") == "auto":
        out["decoder_norm"] = penalty.decoder_norms[0] if penalty is not None else "unit"
    return out


def _control(cfg: DictConfig, sae, penalty) -> Control:
    """The run's sparsity control (the SAE class declares whether it is the coefficient or k)."""
    target = _target_l0(cfg)
    if target is not None:  # the target decides; k (then set from it) is its own
        return Control("target_l0", f"{target:g}", ("train.target_l0",) + (("model.k",) if sae.sparsity_control == "k"
                                                                             else ()))
    if sae.sparsity_control == "k":
        return Control("k", str(sae.k), ("model.k",))
    key = coefficient_key(cfg)
    return Control("coefficient", str(OmegaConf.select(cfg, key) if key else None), (key,) if key else ())


def _flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def config_dirs() -> tuple[Path, ...]:
    """The running command's `--config-dir`s (whose model configs a saved SAE's variant key may name)."""
    try:
        sources = HydraConfig.get().runtime.config_sources
    except (ValueError, AttributeError):  # composed without a running Hydra command
        return ()
    return tuple(Path(s.path) for s in sources if s.schema == "file" and s.path)


# groups the config tree picks from other choices (conf/config.yaml: `${data}`, `${data}_${loss}`): they say nothing
# that data and loss do not, and would split series labels by them
DERIVED_GROUPS = ("data_defaults", "data_loss")


def _choices() -> dict[str, str]:
    try:
        return {k: v for k, v in HydraConfig.get().runtime.choices.items()
                if not k.startswith("hydra") and k not in DERIVED_GROUPS and isinstance(v, str)}
    except (ValueError, AttributeError):  # composed without a running Hydra command (a notebook, a test)
        return {}


def tracking(cfg: DictConfig, control: Control) -> Tracking:
    """The run's MLflow identity: params (flattened config, secrets masked), and the tags that group a sweep's
    runs into series and plot them (sweep, variant, width, coefficient, seed, commit, sparsity control)."""
    resolved = redact({str(k): _resolved(cfg[k]) for k in cfg if k != "hydra"})
    params = _flatten(resolved)
    choices = _choices()
    variant = choices.get("model") or str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    key = coefficient_key(cfg)
    tags = {"sweep": str(cfg.name), "variant": str(variant), "width": str(cfg.model.get("d_sae")),
            "coefficient": str(OmegaConf.select(cfg, key) if key else None), "seed": str(cfg.seed),
            "git_commit": git_commit(), "sparsity_control": control.name, "sparsity_value": control.value,
            "series_exclude": ",".join(control.keys),
            "series": series.series_id(series.items(params, list(control.keys))),
            "saeexp.choices": json.dumps(choices)}
    run_dir = _run_dir(cfg)
    if run_dir is not None:
        tags[RUN_DIR_TAG] = str(run_dir)
    if slurm_job_id():
        tags["slurm_job_id"] = slurm_job_id()
    tags.update({str(k): str(v) for k, v in (cfg.logger.get("tags") or {}).items()})
    try:
        logger = functools.partial(make(cfg.logger, _partial_=True), tags=tags)
    except InterpolationResolutionError:  # no run name without Hydra's runtime: only `train` needs the logger
        logger = functools.partial(_no_logger, "logger.run_name")
    return Tracking(uri=str(_select(cfg, "logger.tracking_uri")), experiment=str(cfg.logger.experiment_name), tags=tags,
                    params=params, config_yaml=OmegaConf.to_yaml(OmegaConf.create(resolved)), make_logger=logger)


def _resolved(node):
    """A top-level node resolved, or as written where it points at Hydra's runtime and none is running (a config
    composed in a notebook: `paths.run_dir`, `logger.run_name`)."""
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except InterpolationResolutionError:
        return OmegaConf.to_container(node, resolve=False)


def _select(cfg: DictConfig, key: str):
    """The value at `key`, or None where it points at Hydra's runtime and none is running (`paths.*`)."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except InterpolationResolutionError:
        return None


def _run_dir(cfg: DictConfig) -> Path | None:
    value = _select(cfg, "paths.run_dir")
    return Path(value) if value else None


def _no_logger(key: str, **_):
    raise ConfigError(f"{key} is not set: expected a run name (set by the `saeexp` command; composing the config "
                      f"yourself, pass {key}=NAME and paths.run_dir=DIR)")


def multirun() -> bool:
    """Whether the running Hydra command is a `-m` sweep."""
    try:
        mode = HydraConfig.get().mode
    except (ValueError, AttributeError):
        return False
    return mode is not None and mode.name == "MULTIRUN"


def _check_devices(trainer: DictConfig, batch_size: int) -> None:
    """trainer=ddp: the global batch splits evenly over the ranks (refused here, before the lock and the ranks
    start, rather than by every rank inside the fit)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(nodes, int):  # "auto", a list of ids: Lightning decides
        return
    world = devices * nodes
    if world < 1:
        raise ConfigError(f"trainer.devices={devices}, trainer.num_nodes={nodes}: expected at least 1 each")
    if batch_size % world:
        raise ConfigError(f"train.batch_size={batch_size} over {world} devices: expected a multiple of {world} "
                          "(each device steps on an equal share of every global batch)")


def plan_run(cfg: DictConfig, source=None) -> RunPlan:
    """The run plan of a composed training config (`source`: an already built data source to share)."""
    check_config(cfg)
    sched = schedule(cfg)
    source = source or make(cfg.data)
    source.check_tokens(sched.steps * sched.batch_size)  # stream (issue 27): no silent repeats of the data
    _check_devices(cfg.trainer, sched.batch_size)
    penalty = make(plain(cfg.loss)) if cfg.loss.get("_target_") else None
    extra = [make(cfg.ortho)] if (cfg.get("ortho") or {}).get("_target_") else []
    sae = make(cfg.model, **_model_kwargs(cfg, penalty, sched.target_l0))
    penalties = [penalty, *extra] if penalty is not None else extra
    for term in penalties:
        term.validate(sae)
    if sae.sparsity == "penalty" and not any(p.is_sparsity and p.coef > 0 for p in penalties):
        key = coefficient_key(cfg)
        zero = f"{key}=0" if key and OmegaConf.select(cfg, key) == 0 else "no sparsity penalty"
        raise ConfigError(f"model={type(sae).__name__} with {zero}: it would learn no sparsity; expected a "
                          "coefficient > 0 (loss=l1, loss.l1=2e-3)")
    if sched.target_l0 is not None and sae.sparsity_control != "k" and not any(p.is_sparsity for p in penalties):
        raise ConfigError(f"train.target_l0={sched.target_l0:g} with no sparsity penalty to adapt (loss=none)")
    resampler = make(cfg.resampler) if (cfg.get("resampler") or {}).get("_target_") else None
    if resampler is not None:
        resampler.validate(sae)
    control = _control(cfg, sae, penalty)
    feats = cfg.get("features") or {}
    t = cfg.train
    return RunPlan(
        run_dir=_run_dir(cfg), seed=int(cfg.seed), overwrite=bool(cfg.overwrite), schedule=sched,
        init=Init(scale_inputs=bool(t.scale_inputs), b_dec_init=str(t.b_dec_init),
                  fit_encoder_scale=bool(t.fit_encoder_scale), sample_tokens=int(t.init_sample_tokens)),
        control=control, tracking=tracking(cfg, control), source=source,
        data_config=plain(cfg.data), sae=sae, penalties=penalties,
        resampler=resampler, optimizer=make(cfg.optimizer), make_trainer=make(cfg.trainer, _partial_=True),
        callbacks=[make(c) for c in (cfg.get("callbacks") or {}).values() if c],
        model_config=plain(cfg.model), variant=_choices().get("model"), trainer_config=plain(cfg.trainer),
        dashboard=bool(feats.get("enabled", False)) and (not multirun() or bool(feats.get("in_sweeps", False))))

