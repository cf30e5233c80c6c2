"""What a shared file may name: classes come from the config trees in use, never from an import path in the file.

A saved SAE names its variant by a key (`relu`, `gated`, or a key of a user's `--config-dir`); the key maps to
the `_target_` that `conf/model/<key>.yaml` declares. A `_target_` read out of a downloaded folder is only
accepted when it equals one those config files declare for the same group, so loading imports and builds
nothing that the user's own configuration would not.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from saeexp.configtree import CONF_DIR as PACKAGE_CONF
from saeexp.errors import ConfigError
from saeexp.sae.base import SAE


def config_dirs(extra=()) -> list[Path]:
    """The package's `conf/`, then `extra` (a command's `--config-dir`s, which its entry passes down)."""
    dirs = [PACKAGE_CONF, *(Path(d) for d in extra)]
    out = []
    for d in dirs:
        d = d.expanduser().resolve()
        if d not in out:
            out.append(d)
    return out


def _import(path: str):
    """The object a dotted `module.attr` path names (what Hydra's `_target_` resolution does)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import {path!r} ({type(e).__name__}: {e})") from None


def _targets_in(node) -> list[str]:
    """Every `_target_` string anywhere in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        found = [str(node["_target_"])] if node.get("_target_") is not None else []
        return found + [t for v in node.values() for t in _targets_in(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets_in(v)]
    return []


def group_targets(group: str, dirs=None) -> dict[str, list[str]]:
    """Option name -> the `_target_`s its `<dir>/<group>/<name>.yaml` declares (first the top-level one)."""
    out: dict[str, list[str]] = {}
    for d in config_dirs() if dirs is None else [Path(p) for p in dirs]:
        for f in sorted((d / group).glob("*.yaml")):
            try:
                node = yaml.safe_load(f.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue  # a broken user config is Hydra's to report, not a reason to allow anything
            if isinstance(node, dict):
                out.setdefault(f.stem, _targets_in(node))
    return out


def variants(dirs=None) -> dict[str, str]:
    """Variant key -> the SAE class path `conf/model/<key>.yaml` names (package first, then config dirs)."""
    return {k: t[0] for k, t in group_targets("model", dirs).items() if t and isinstance(t[0], str)}


def variant_key(target: str, dirs=None) -> str | None:
    """The first variant key whose config names this class path, or None."""
    return next((k for k, t in variants(dirs).items() if t == target), None)


def variant_class(key: str, dirs=None, where: str = "variant"):
    """The SAE class a variant key names; a ConfigError for a key no model config in use declares."""
    known = variants(dirs)
    if not isinstance(key, str) or key not in known:
        raise ConfigError(f"{where}: variant {key!r} is not one of the model configs in use {sorted(known)} "
                          "(a variant of your own: pass its --config-dir)")
    cls = _import(known[key])
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise ConfigError(f"{where}: variant {key!r} names {known[key]}, which is not an saeexp SAE class")
    return cls


def check_targets(node, group: str, where: str, dirs=None) -> None:
    """Refuse a tree (e.g. meta.json's `data`) naming any `_target_` the `group` configs in use do not declare."""
    allowed = {t for ts in group_targets(group, dirs).values() for t in ts}
    for t in _targets_in(node):
        if t not in allowed:
            raise ConfigError(f"{where}: _target_ {t!r} is not declared by any {group} config in use; "
                              f"expected one of {sorted(allowed)}")
