"""Writing the SAELens 6.x folder format (see `saeexp.interop.saelens` for the math each architecture computes):
an explicit table from saeexp's classes to SAELens architectures and tensor names; what SAELens cannot compute
is refused with the reason."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.interop.saelens import CFG, FORMAT_VERSION, SPARSITY, WEIGHTS
from saeexp.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE


def _standard(sae):
    return "standard", {k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, {}


def _gated(sae):
    names = ("b_gate", "r_mag", "b_mag", "W_dec", "b_dec")
    return "gated", {"W_enc": sae.W_gate, **{k: getattr(sae, k) for k in names}}, {}


def _jumprelu(sae):
    # the threshold in use (saeexp floors the raw parameter, or stores its log)
    return "jumprelu", {**_standard(sae)[1], "threshold": sae.theta().detach()}, {}


def _topk(sae):
    return "topk", _standard(sae)[1], {"k": int(sae.k), "rescale_acts_by_decoder_norm": False}


def _batchtopk(sae):
    # at inference BatchTopK is a JumpReLU with one global threshold (arXiv 2412.06410, section 3)
    thr = float(sae.threshold)
    if not thr >= 0:
        raise ConfigError("this batchtopk SAE has no inference threshold yet (never trained): nothing to export")
    return "jumprelu", {**_standard(sae)[1], "threshold": torch.full((sae.d_sae,), thr)}, {}


def _export_table() -> dict:
    return {ReLUSAE: _standard, GatedSAE: _gated, JumpReLUSAE: _jumprelu, TopKSAE: _topk, BatchTopKSAE: _batchtopk}


# variants SAELens has no architecture for, and why (one line each)
NOT_EXPORTABLE = {
    "SCSAE": "scsae outputs z - b_enc where z > 0 (the bias gates but is not added); no SAELens architecture "
             "computes that",
}


def _local(corpus: str) -> bool:
    return corpus.startswith(("/", "~", ".")) or os.path.exists(corpus) or any(c in corpus for c in "*?[")


def lm_metadata(data: dict | None) -> dict:
    """SAELens' metadata fields from a saeexp data config (what a `data=lm` run was trained on)."""
    data = data or {}
    if "hook" not in data or "model" not in data:
        return {}
    corpus = data.get("corpus")
    bos = data.get("bos", "exclude")
    return {
        "model_name": data["model"],  # the hub id, never the local weights' path
        "model_class_name": "HookedTransformer",
        "hook_name": data["hook"],
        "hook_head_index": None,
        "context_size": data.get("context_size"),
        "prepend_bos": bos != "none",
        # saeexp leaves out the BOS position only (EOS separators between documents are trained on)
        "exclude_special_tokens": bos == "exclude",
        "sequence_separator_token": "eos",
        # a hub dataset name, never a local path or glob (a shared SAE does not carry the trainer's directories)
        "dataset_path": corpus if isinstance(corpus, str) and not _local(corpus) else None,
    }


def export(sae, out: str | Path, metadata: dict | None = None, density_F: Tensor | None = None) -> Path:
    """Write `sae` (raw activations in and out) as a SAELens folder at `out` (a new folder, written atomically)."""
    name = type(sae).__name__
    if name in NOT_EXPORTABLE:
        raise ConfigError(f"cannot export to SAELens: {NOT_EXPORTABLE[name]}")
    table = _export_table()
    if type(sae) not in table:
        raise ConfigError(f"cannot export {name} to SAELens: exportable are "
                          f"{sorted(c.__name__ for c in table)}")
    arch, tensors, extra = table[type(sae)](sae)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{str(out)!r} exists and is not empty: choose a new folder")
    cfg = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None,
                        **(metadata or {})},
           **extra, "architecture": arch}
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    (tmp / CFG).write_text(json.dumps(cfg, indent=2))
    if density_F is not None:
        # SAELens' convention: log10 of the firing frequency, with 1e-10 added so dead features stay finite
        log_F = torch.log10(density_F.detach().to("cpu", torch.float32) + 1e-10)
        save_file({"sparsity": log_F.contiguous()}, str(tmp / SPARSITY))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
