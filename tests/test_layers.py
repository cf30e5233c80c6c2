"""The config stops at the door: a run plan built from any option of any config group holds no piece of the
config (no DictConfig or ListConfig anywhere in the objects handed down), so the layers below the build layer
never see one. (Which modules may import omegaconf or hydra at all is the import contract in pyproject.toml,
checked by `lint-imports` in `make check`.)"""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import CONF, compose_cfg
from omegaconf import DictConfig, ListConfig

from saeexp.build.plan import plan_run

OPTIONS = [(g, p.stem) for g in ("model", "loss", "data", "resampler", "ortho", "optimizer", "trainer")
           for p in sorted((CONF / g).glob("*.yaml")) if (g, p.stem) not in {("data", "file"), ("data", "lm")}]


def config_pieces(obj, path="plan", seen=None, depth=0):
    """Paths to every DictConfig/ListConfig reachable from `obj` (fields, attributes, partials, containers)."""
    seen = set() if seen is None else seen
    if isinstance(obj, (DictConfig, ListConfig)):
        return [path]
    if depth > 6 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return []
    seen.add(id(obj))
    if isinstance(obj, functools.partial):
        children = [("func", obj.func), *enumerate(obj.args), *obj.keywords.items()]
    elif isinstance(obj, dict):
        children = list(obj.items())
    elif isinstance(obj, (list, tuple, set)):
        children = list(enumerate(obj))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return []
    else:
        children = [(k, v) for k, v in vars(obj).items() if not k.startswith("_parameters")] \
            if hasattr(obj, "__dict__") and type(obj).__module__.startswith(("saeexp", "lightning", "torch")) else []
    return [p for k, v in children for p in config_pieces(v, f"{path}.{k}", seen, depth + 1)]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_a_plan_holds_no_piece_of_the_config(group, option, tmp_path):
    overrides = [f"{group}={option}", "model.d_sae=32"]
    if group == "loss" and option == "none":
        overrides.append("model=topk")
    elif group == "loss" and option == "l0":
        overrides.append("model=jumprelu")
    cfg = compose_cfg(overrides, run_dir=tmp_path / "run")
    plan = plan_run(cfg)
    assert config_pieces(plan) == []
