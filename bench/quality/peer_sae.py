"""A peer library's trained SAE as plain tensors, so saeexp's metric code can score it (pure torch).

Exported in raw-input space by bench/quality/saelens_train.py: `peer.safetensors` (W_enc [D, F], b_enc, W_dec [F, D],
b_dec, and per kind: threshold [F]; W_mag, b_mag for gated) + `peer.json` ({"kind", "k", "apply_b_dec"}).
Kinds: relu (SAELens standard), jumprelu (also SAELens' BatchTopK, saved as a JumpReLU), topk, gated.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn


class PeerOutput(NamedTuple):
    x_hat_BD: Tensor
    acts_BF: Tensor


class PeerSAE(nn.Module):
    """The inference forward of SAELens' standard, gated, jumprelu and topk SAEs."""

    def __init__(self, tensors: dict[str, Tensor], kind: str, k: int | None = None, apply_b_dec: bool = True):
        super().__init__()
        self.t, self.kind, self.k, self.apply_b_dec = tensors, kind, k, apply_b_dec
        self.d_in, self.d_sae = tensors["W_enc"].shape
        self.W_dec = tensors["W_dec"]

    def encode(self, x_BD: Tensor) -> Tensor:
        t = self.t
        x_BD = x_BD - t["b_dec"] if self.apply_b_dec else x_BD
        pre_BF = x_BD @ t["W_enc"] + t["b_enc"]
        if self.kind == "relu":
            return pre_BF.relu()
        if self.kind == "jumprelu":
            return pre_BF.relu() * (pre_BF > t["threshold"])
        if self.kind == "topk":
            vals, idx = pre_BF.topk(self.k, dim=-1)
            return torch.zeros_like(pre_BF).scatter_(-1, idx, vals.relu())
        if self.kind == "gated":  # pre_BF is the gate; magnitudes through W_enc * exp(r_mag)
            return (pre_BF > 0) * (x_BD @ t["W_mag"] + t["b_mag"]).relu()
        raise ValueError(f"unknown peer SAE kind {self.kind!r}")

    def decode(self, acts_BF: Tensor) -> Tensor:
        return acts_BF @ self.t["W_dec"] + self.t["b_dec"]

    def forward(self, x_BD: Tensor) -> PeerOutput:
        acts_BF = self.encode(x_BD)
        return PeerOutput(self.decode(acts_BF), acts_BF)


def save_peer(folder: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(folder / "peer.safetensors"))
    (folder / "peer.json").write_text(json.dumps(meta, indent=2))


def load_peer(folder: Path) -> PeerSAE:
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / "peer.json").read_text())
    tensors = load_file(str(Path(folder) / "peer.safetensors"))
    return PeerSAE(tensors, meta["kind"], meta.get("k"), meta.get("apply_b_dec", True)).eval()
