"""The SAELens 6.x folder format, read and written natively: `cfg.json` + `sae_weights.safetensors`
(+ `sparsity.safetensors`, log10 firing frequency per feature). sae_lens itself is never imported.

SAELens' math, per architecture (with `apply_b_dec_to_input` true and no normalisation):
    standard  f = ReLU((x - b_dec) W_enc + b_enc)
    gated     f = 1[(x - b_dec) W_enc + b_gate > 0] * ReLU((x - b_dec)(W_enc * exp(r_mag)) + b_mag)
    jumprelu  f = ReLU(z) * 1[z > threshold],  z = (x - b_dec) W_enc + b_enc
    topk      f = ReLU of the k largest z (z scaled by ||W_dec_i|| first if rescale_acts_by_decoder_norm)
    decode    x_hat = f W_dec + b_dec          (W_enc [d_in, d_sae], W_dec [d_sae, d_in])
Which saeexp class computes each is an explicit table of classes: nothing named in a folder is imported.
Writing is `saeexp.interop.saelens_write`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.sae import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saeexp.util.weights import check_weights

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
# the SAELens release whose format this module was checked against (tests/test_saelens.py runs it)
FORMAT_VERSION = "6.54.12"
# SAELens' dtype names (with or without "torch."): all upcast exactly to saeexp's float32
UPCAST_DTYPES = ("float32", "float16", "bfloat16")


def is_folder(path: str | Path) -> bool:
    """A SAELens folder: a cfg.json and no saeexp `sae.safetensors`."""
    path = Path(path)
    return (path / CFG).is_file() and not (path / "sae.safetensors").exists()


# --- import ---------------------------------------------------------------------------------------------
def _import_table() -> dict:
    """SAELens architecture -> (saeexp class, tensors the folder must hold, [d_in|d_sae] shape of each)."""
    base = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}
    return {
        "standard": (ReLUSAE, {**base, "b_enc": ("d_sae",)}),
        "gated": (GatedSAE, {**base, "b_gate": ("d_sae",), "r_mag": ("d_sae",), "b_mag": ("d_sae",)}),
        "jumprelu": (JumpReLUSAE, {**base, "b_enc": ("d_sae",), "threshold": ("d_sae",)}),
        "topk": (TopKSAE, {**base, "b_enc": ("d_sae",)}),
    }


def read_cfg(path: Path) -> dict:
    try:
        cfg = json.loads((path / CFG).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{str(path / CFG)!r}: not a readable JSON SAELens config ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{str(path / CFG)!r}: expected a JSON object")
    return cfg


def _refuse_unfoldable(cfg: dict, where: str) -> None:
    """Options whose math saeexp's SAE cannot carry exactly: one line each."""
    norm = cfg.get("normalize_activations", "none")
    if norm == "expected_average_only_in":
        raise ConfigError(f"{where}: normalize_activations='expected_average_only_in' means inputs are scaled by a "
                          "factor this folder does not hold; fold it first (SAELens: "
                          "sae.fold_activation_norm_scaling_factor(s), then save_model)")
    if norm not in (None, "none"):
        raise ConfigError(f"{where}: normalize_activations={norm!r} is a per-token normalisation, not a fixed "
                          "linear map saeexp can fold into the weights; expected 'none'")
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise ConfigError(f"{where}: reshape_activations={cfg['reshape_activations']!r} (per-head hook_z inputs) "
                          "is not supported; expected 'none'")
    dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in UPCAST_DTYPES:
        raise ConfigError(f"{where}: dtype={cfg.get('dtype')!r}: saeexp computes in float32 and reads "
                          f"{UPCAST_DTYPES} exactly; other dtypes would be rounded")


def _read_tensors(path: Path, shapes: dict, dims: dict, arch: str) -> dict[str, Tensor]:
    file = path / WEIGHTS
    if not file.is_file():
        raise ConfigError(f"{str(path)!r}: no {WEIGHTS} next to {CFG}")
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        missing = [k for k in shapes if k not in keys]
        if missing:
            raise ConfigError(f"{str(file)!r}: missing tensors {missing} (a SAELens '{arch}' SAE has "
                              f"{sorted(shapes)})")
        extra = sorted(keys - set(shapes) - {"scaling_factor"})
        if extra:
            raise ConfigError(f"{str(file)!r}: unexpected tensors {extra} for architecture '{arch}' "
                              f"(expected {sorted(shapes)})")
        out = {k: f.get_tensor(k) for k in keys}
    for k, names in shapes.items():
        want = tuple(dims[n] for n in names)
        if tuple(out[k].shape) != want:
            raise ConfigError(f"{str(file)!r}: {k} has shape {tuple(out[k].shape)}, expected {want} "
                              f"({', '.join(f'{n}={dims[n]}' for n in dict.fromkeys(names))})")
    check_weights(out, {}, str(file))  # shapes checked above against d_in and d_sae
    scaling = out.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise ConfigError(f"{str(file)!r}: a fine-tuning 'scaling_factor' that is not all ones (pre-6.0 SAELens); "
                          "fold it into W_dec in SAELens first")
    return {k: v.to(torch.float32) for k, v in out.items()}


@torch.no_grad()
def _fold_options(cfg: dict, arch: str, t: dict[str, Tensor], where: str) -> list[str]:
    """Fold the math-changing options saeexp can carry exactly into the tensors; returns what was folded."""
    folded = []
    if cfg.get("apply_b_dec_to_input") is False:
        # SAELens encodes x, saeexp (x - b_dec): add b_dec's contribution to the encoder biases
        shift_F = t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_gate"] += shift_F
            t["b_mag"] += shift_F * t["r_mag"].exp()
        else:
            t["b_enc"] += shift_F
        folded.append("apply_b_dec_to_input=false")
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # top-k of z * n, decoded as (f / n) W_dec: the same as z' = z * n (W_enc, b_enc scaled) and W_dec / n
        n_F = t["W_dec"].norm(dim=1)
        if not bool((n_F > 0).all()):
            raise ConfigError(f"{where}: rescale_acts_by_decoder_norm with zero decoder rows cannot be folded")
        t["W_enc"] *= n_F
        t["b_enc"] *= n_F
        t["W_dec"] /= n_F[:, None]
        folded.append("rescale_acts_by_decoder_norm=true")
    return folded


def load(path: str | Path) -> tuple:
    """A SAELens folder as (saeexp SAE on raw activations, info: architecture, metadata, model_cfg, folded)."""
    path = Path(path)
    cfg = read_cfg(path)
    where = str(path / CFG)
    table = _import_table()
    arch = cfg.get("architecture", "standard")
    if arch not in table:
        raise ConfigError(f"{where}: architecture {arch!r} is not one saeexp reads (expected one of {tuple(table)})")
    dims = {}
    for key in ("d_in", "d_sae"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: {key}={v!r}: expected an integer >= 1")
        dims[key] = v
    _refuse_unfoldable(cfg, where)
    cls, shapes = table[arch]
    t = _read_tensors(path, shapes, dims, arch)
    folded = _fold_options(cfg, arch, t, where)
    extra: dict[str, object] = {}
    if arch == "topk":
        k = cfg.get("k")
        if not isinstance(k, int) or not 1 <= k <= dims["d_sae"]:
            raise ConfigError(f"{where}: k={k!r}: expected an integer in [1, d_sae={dims['d_sae']}]")
        extra["k"] = k
    if arch == "jumprelu":
        # SAELens computes ReLU(z) * 1[z > threshold]: a threshold <= 0 acts as 0, which saeexp's floor of 0 gives
        extra.update(threshold_param="raw", min_threshold=0.0)
    if arch == "gated":
        t["W_gate"] = t.pop("W_enc")
    # a unit-norm decoder stays unit under saeexp's fine-tuning; any other is left free
    unit = bool(torch.allclose(t["W_dec"].norm(dim=1), torch.ones(dims["d_sae"]), atol=1e-4))
    sae = cls(d_in=dims["d_in"], d_sae=dims["d_sae"], decoder_norm="unit" if unit else "free", **extra)
    missing, unexpected = sae.load_state_dict(t, strict=False)
    missing = [k for k in missing if k != "tokens_since_fired"]
    if missing or unexpected:  # the table and the class disagree: a saeexp bug, not bad input
        raise RuntimeError(f"SAELens '{arch}' -> {cls.__name__}: missing {missing}, unexpected {unexpected}")
    model_cfg = {"_target_": f"saeexp.sae.{cls.__name__}", **dims, "decoder_norm": sae.decoder_norm, **extra}
    info = {"format": "saelens", "architecture": arch, "metadata": cfg.get("metadata") or {},
            "model_cfg": model_cfg, "folded": folded, "path": str(path)}
    return sae.eval(), info
