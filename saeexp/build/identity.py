"""Run identity: a readable name from the command's overrides plus a short hash of everything that changes the
result.

The name alone cannot be trusted: it shows only what was typed (a changed YAML default leaves it as it was),
and it is cut to fit a file name. The hash is over the resolved config, so an edited default, another trainer
(bf16 vs fp32) or matmul precision gives another directory; it is appended after the cut, so no cut can merge
two configs. saeexp.util.neutral holds the one list of keys that change no result: the hash leaves them
out, and so does the readable name.
"""
from __future__ import annotations

import hashlib
import json
import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from saeexp.util.neutral import NAMELESS, RESULT_NEUTRAL, neutral  # noqa: F401  (re-exported)
from saeexp.util.redact import is_secret_key, redact_text

NAME_CHARS = 180  # the readable part; + "__" + the hash stays far below a file name's 255 bytes
HASH_CHARS = 12   # 48 bits: a collision within one experiment's runs is out of reach

def flat_items(node, prefix: str = "") -> dict[str, object]:
    """Dotted key -> leaf value of a plain (resolved) container."""
    out: dict[str, object] = {}
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        return {prefix[:-1]: node}
    for k, v in items:
        if isinstance(v, (dict, list)) and v:
            out.update(flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_items(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as dotted keys, less the result-neutral ones (each top-level node resolved alone, so
    an excluded node that points back at the run name, such as `logger.run_name`, is never resolved)."""
    out: dict[str, object] = {}
    for top in cfg:
        if neutral(str(top)):
            continue
        node = cfg[top]
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        out.update({k: v for k, v in flat_items({top: value}).items() if not neutral(k)})
    return out


def config_hash(cfg: DictConfig) -> str:
    """Short hex digest of `identity_items(cfg)`: equal for configs that compute the same run."""
    text = json.dumps(identity_items(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def named_overrides(task_overrides) -> str:
    """The command's overrides that name a run, as `k=v,k=v` (sorted): result-neutral keys, the experiment
    preset and secret-named keys left out, URI user-info masked (a token typed on the command line must not
    become a path)."""
    lines = []
    for o in OverridesParser.create().parse_overrides([str(t) for t in task_overrides or ()]):
        key = o.key_or_group
        if neutral(key, NAMELESS) or is_secret_key(key):
            continue
        lines.append(str(o.input_line))
    return redact_text(",".join(sorted(lines)))


def readable(overrides: str) -> str:
    """`model.d_sae=64,loss.l1=2e-3` -> `loss.l1-2e-3_model.d_sae-64`... no '=' or ',' (passable unquoted)."""
    name = (overrides or "").replace("=", "-").replace(",", "_")
    return re.sub(r"[^\w.+-]", "_", name) or "default"


def run_dir_name(task_overrides, cfg: DictConfig) -> str:
    """`<readable overrides, cut>__<config hash>`: the hash is never cut."""
    return f"{readable(named_overrides(task_overrides))[:NAME_CHARS]}__{config_hash(cfg)}"
