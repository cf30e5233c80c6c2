"""Checks of a composed training config that need nothing built: run before any directory or MLflow run exists."""
from __future__ import annotations

import math
from typing import Any, Iterable

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from saeexp.errors import ConfigError
from saeexp.util.safepath import path_part

# groups whose numbers must be finite (paths, logger and hydra hold no coefficients; their strings may be URIs)
_NUMERIC_GROUPS = ("model", "loss", "data", "resampler", "optimizer", "train")


def _value(cfg: DictConfig, key: str):
    """The resolved value at `key`, or None when absent or not resolvable here (left to the code that uses it)."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation needing a runtime field (${hydra:...}) not set yet
        return None


def _non_finite(node, prefix: str):
    """(key, value) of the first float that is NaN or infinite in a plain tree, else None."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return (prefix, node) if isinstance(node, float) and not math.isfinite(node) else None
    for k, v in items:
        hit = _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if hit:
            return hit
    return None


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"seed={seed!r}: expected an integer in [0, 2**32)")
    return seed


def check_grad_clip(clip) -> None:
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ConfigError(f"train.grad_clip={clip!r}: expected a number > 0, or null for no clipping")


def coefficient_key(cfg: DictConfig) -> str | None:
    """The penalty's coefficient key (`loss.l1`, `loss.l0`), as its class declares it; None without a penalty."""
    target = _value(cfg, "loss._target_")
    if not target:
        return None
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - an unknown class: instantiating it reports that, with Hydra's message
        return None
    key = getattr(cls, "coefficient_key", None)
    return f"loss.{key}" if key else None


def coefficient_note(cfg: DictConfig, overrides: list[str]) -> str | None:
    """One line when the command line gives a sparsity coefficient that a target L0 from the config tree (data=lm's
    default, conf/data_defaults/lm.yaml) will adapt: that coefficient is only where the controller starts."""
    target, key = _value(cfg, "train.target_l0"), coefficient_key(cfg)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if target is None or key is None or key not in given or "train.target_l0" in given:
        return None
    return (f"saeexp: note: {key}={_value(cfg, key)} is where train.target_l0={target} (the config's default) starts "
            f"the coefficient it adapts; add train.target_l0=null to train at {key}={_value(cfg, key)}")


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the key for a value no run could use: checked before anything is written."""
    if "name" in cfg:
        path_part("name", _value(cfg, "name"))
    if "seed" in cfg:
        check_seed(_value(cfg, "seed"))
    for group in _NUMERIC_GROUPS:
        node = _value(cfg, group)
        if isinstance(node, DictConfig):
            try:
                plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
            except Exception:  # noqa: BLE001 - unresolvable here; the constructors report it
                continue
            hit = _non_finite(plain, group)
            if hit:
                raise ConfigError(f"{hit[0]}={hit[1]}: expected a finite number")
    key = coefficient_key(cfg)
    coef = _value(cfg, key) if key else None
    if coef is not None and (isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0):
        raise ConfigError(f"{key}={coef!r}: expected a number >= 0")
    lr = _value(cfg, "optimizer.lr")
    if "optimizer" in cfg and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"optimizer.lr={lr!r}: expected a number > 0")
    check_grad_clip(_value(cfg, "train.grad_clip"))
