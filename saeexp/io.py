"""Saved SAEs: `<dir>/sae.safetensors` + `<dir>/config.yaml` (+ `meta.json`), loadable with no trainer."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CONVENTIONS = {
    "input_scale": "trained on x * input_scale so that E||x|| = sqrt(d_in); folded into the saved weights",
    "recon": "squared error averaged over tokens and d_in",
    "fvu": "sum of squared errors / sum of squared deviations from the mean, over the evaluation set",
    "l2_ratio": "mean over tokens of ||x_hat|| / ||x||",
    "dead": "did not fire over a window counted in tokens",
}


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """A sibling name no other writer uses, on any host sharing the filesystem: `<name>.<kind>.<host>.<pid>.<rand>`
    (a pid alone repeats across the nodes of a cluster)."""
    import socket
    import uuid

    return path.with_name(f"{path.name}.{kind}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a reader (or a kill) never sees half of it."""
    tmp = temp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def save_sae(sae, directory: str | Path, model_cfg: dict, meta: dict) -> Path:
    """Save an SAE that takes raw inputs (the input scale already folded in); atomic as a directory."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = temp_name(directory)
    tmp.mkdir(parents=True)
    save_file({k: v.cpu() for k, v in sae.artifact_state().items()}, str(tmp / "sae.safetensors"))
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"model": model_cfg})))
    (tmp / "meta.json").write_text(json.dumps({**meta, "conventions": CONVENTIONS}, indent=2))
    old = temp_name(directory, "old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_sae(path: str | Path, device: str | torch.device = "cpu"):
    """Load a saved SAE as a plain torch module (`encode`, `decode`, `forward`) taking raw activations."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from saeexp.errors import ConfigError

    path = Path(path)
    if path.is_dir() and (path / "sae").is_dir() and not (path / "sae.safetensors").exists():
        path = path / "sae"  # a run directory works too
    if not (path / "sae.safetensors").exists():
        raise ConfigError(f"{str(path)!r}: no sae.safetensors there (expected a saved SAE directory)")
    cfg = OmegaConf.load(path / "config.yaml")
    sae = instantiate(cfg.model)
    state = load_file(str(path / "sae.safetensors"))
    missing, unexpected = sae.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "tokens_since_fired"]
    if missing or unexpected:
        raise ConfigError(f"{str(path)!r}: weights do not match {cfg.model._target_} "
                          f"(missing {missing}, unexpected {unexpected})")
    return sae.to(device).eval()


def load_meta(path: str | Path) -> dict:
    path = Path(path)
    if (path / "sae").is_dir():
        path = path / "sae"
    return json.loads((path / "meta.json").read_text())
