"""Saved SAEs: `<dir>/sae.safetensors` + `<dir>/config.yaml` (+ `meta.json`), loadable with no trainer."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saeexp import registry
from saeexp.errors import ConfigError
from saeexp.interop import saelens
from saeexp.util.files import temp_name
from saeexp.util.redact import redact
from saeexp.util.weights import check_weights

CONVENTIONS = {
    "input_scale": "trained on x * input_scale so that E||x|| = sqrt(d_in); folded into the saved weights",
    "recon": "squared error averaged over tokens and d_in",
    "fvu": "sum of squared errors / sum of squared deviations from the mean, over the evaluation set",
    "l2_ratio": "mean over tokens of ||x_hat|| / ||x||",
    "dead": "did not fire over a window counted in tokens",
}


def save_sae(sae, directory: str | Path, model_cfg: dict, meta: dict, variant: str | None = None) -> Path:
    """Save an SAE that takes raw inputs (the input scale already folded in); atomic as a directory.

    `variant` is the key of the model config it was built from (`relu`, or a key of a user's --config-dir); by
    default the package's key whose config declares its class."""
    directory = Path(directory)
    tmp = temp_name(directory)
    tmp.mkdir(parents=True)
    save_file({k: v.cpu() for k, v in sae.artifact_state().items()}, str(tmp / "sae.safetensors"))
    # loading reads the variant key (the `_target_` stays as a record, and for readers of older folders)
    variant = variant or registry.variant_key(str(model_cfg.get("_target_")))
    (tmp / "config.yaml").write_text(yaml.safe_dump({"variant": variant, "model": model_cfg}, sort_keys=False))
    (tmp / "meta.json").write_text(json.dumps({**redact(meta), "conventions": CONVENTIONS}, indent=2))
    old = temp_name(directory, "old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def sae_dir(path: str | Path) -> Path:
    """A saved SAE directory, or the `sae/` of a run directory."""
    path = Path(path)
    if path.is_dir() and (path / "sae").is_dir() and not (path / "sae.safetensors").exists():
        path = path / "sae"
    return path


def _plain(node, where: str):
    """Refuse anything in a shared file that could make a loader build or import something."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str) or k.startswith("_"):
                raise ConfigError(f"{where}: key {k!r} is not a constructor argument (nothing is instantiated "
                                  "from a shared file)")
            _plain(v, where)
    elif isinstance(node, list):
        for v in node:
            _plain(v, where)
    elif node is not None and not isinstance(node, (str, int, float, bool)):
        raise ConfigError(f"{where}: value {node!r} is not a plain number, string or list")
    return node


def build_saved_sae(spec: dict, where: str, config_dirs=None):
    """The SAE a saved `config.yaml` describes: its class by variant key from the model configs in use
    (saeexp.registry), its arguments plain values; a ConfigError for anything else."""
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: expected a `model:` mapping of constructor arguments")
    dirs = registry.config_dirs(config_dirs or ())
    key, target = spec.get("variant"), model.get("_target_")
    if key is None and target is not None:  # written before variant keys: accepted only if a config declares it
        key = registry.variant_key(str(target), dirs)
        if key is None:
            raise ConfigError(f"{where}: model _target_ {target!r} is not declared by any model config in use "
                              f"(expected one of {sorted(registry.variants(dirs).values())}); nothing was loaded")
    cls = registry.variant_class(str(key), dirs, where)
    if target is not None and target != registry.variants(dirs)[str(key)]:
        raise ConfigError(f"{where}: model _target_ {target!r} disagrees with variant {key!r}; nothing was loaded")
    kwargs = _plain({k: v for k, v in model.items() if k != "_target_"}, where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: arguments do not fit variant {key!r} ({e})") from None


def load_sae(path: str | Path, device: str | torch.device = "cpu", config_dirs=None):
    """Load a saved SAE as a plain torch module (`encode`, `decode`, `forward`) taking raw activations.

    Nothing named in the folder is imported or run: the variant key picks a class declared by the model
    configs in use (the package's `conf/model/` plus `config_dirs` and a running command's `--config-dir`).
    """
    if saelens.is_folder(Path(path)):  # a SAELens folder (cfg.json + sae_weights.safetensors), read natively
        return saelens.load(Path(path))[0].to(device).eval()
    path = sae_dir(path)
    weights = path / "sae.safetensors"
    if not weights.exists():
        raise ConfigError(f"{str(path)!r}: no sae.safetensors there (expected a saved SAE directory)")
    where = str(path / "config.yaml")
    try:
        spec = yaml.safe_load((path / "config.yaml").read_text())  # plain YAML: no tags, no interpolation
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{where!r}: not a readable SAE config ({type(e).__name__})") from None
    sae = build_saved_sae(spec, repr(where), config_dirs)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{str(weights)!r}: not a readable .safetensors file ({e})") from None
    own = sae.state_dict()
    missing = [k for k in own if k not in state and k != "tokens_since_fired"]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(f"{str(weights)!r}: weights do not match variant {type(sae).__name__} "
                          f"(missing {missing}, unexpected {unexpected})")
    check_weights(state, {k: tuple(v.shape) for k, v in own.items()}, str(weights))
    sae.load_state_dict(state, strict=False)
    return sae.to(device).eval()


def load_meta(path: str | Path) -> dict:
    """`meta.json` of a saved SAE (plain JSON); a ConfigError naming the file when it cannot be read.
    For a SAELens folder, only what its cfg.json says (no input scale, no data config)."""
    if saelens.is_folder(Path(path)):
        return {"saelens": saelens.read_cfg(Path(path))}
    path = sae_dir(path) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{str(path)!r}: not a readable meta.json ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{str(path)!r}: expected a JSON object")
    return meta


def saved_data_config(meta: dict, where: str) -> dict:
    """The data config a saved SAE was trained with, checked: only `_target_`s the data configs in use declare,
    no interpolations (a saved config is resolved at save time)."""
    data = meta.get("data")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: no `data` config recorded; pass data=... on the command line")
    registry.check_targets(data, "data", where)
    if "${" in json.dumps(data):
        raise ConfigError(f"{where}: the data config holds an interpolation ('${{'); expected resolved values")
    return data
