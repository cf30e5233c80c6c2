"""Run identity: a readable name from the overrides plus a short hash of everything that changes the result.

The name alone cannot be trusted: it shows only what was typed (a changed YAML default leaves it as it was),
and it is cut to fit a file name. The hash is over the resolved config, so an edited default, another trainer
(bf16 vs fp32) or matmul precision gives another directory; it is appended after the cut, so no cut can merge
two configs.
"""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

NAME_CHARS = 180  # the readable part; + "__" + the hash stays far below a file name's 255 bytes
HASH_CHARS = 12   # 48 bits: a collision within one experiment's runs is out of reach

# keys that do not change what a run computes: where it writes and logs, how often it logs or checkpoints,
# how it is launched. A key ends an exclusion at a dot boundary (`paths` drops `paths.runs_root`, ...).
RESULT_NEUTRAL = (
    "hydra", "paths", "logger", "name", "overwrite", "callbacks.preemption",
    "train.log_every", "train.checkpoint_every", "train.reuse_memory",
    "trainer.log_every_n_steps", "trainer.enable_model_summary", "trainer.enable_progress_bar",
    "trainer.plugins", "data.cache_dir", "features",
)


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


def neutral(key: str, extra: tuple[str, ...] = ()) -> bool:
    return any(key == n or key.startswith(n + ".") for n in RESULT_NEUTRAL + tuple(extra))


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


def readable(override_dirname: str) -> str:
    """`model.d_sae=64,loss.l1=2e-3` -> `loss.l1-2e-3_model.d_sae-64`: no '=' or ',' (passable unquoted)."""
    import re

    name = (override_dirname or "").replace("=", "-").replace(",", "_")
    return re.sub(r"[^\w.+-]", "_", name) or "default"


def run_dir_name(override_dirname: str, cfg: DictConfig) -> str:
    """`<readable overrides, cut>__<config hash>`: the hash is never cut."""
    return f"{readable(override_dirname)[:NAME_CHARS]}__{config_hash(cfg)}"
