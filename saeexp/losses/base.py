"""The loss is a sum of named terms; each term is a small module that returns its weighted value."""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from saeexp.errors import ConfigError
from saeexp.sae.base import SAE, SAEOutput


class LossTerm(nn.Module):
    """One named term of the loss. `forward` returns the term already multiplied by its coefficient."""

    name: str = "term"
    # the constructor argument (and config key, under the term's group) that holds the coefficient: `loss.l1`
    coefficient_key: ClassVar[str] = "coef"
    # sparsity penalties are multiplied by the sparsity-coefficient warm-up factor
    is_sparsity: bool = False
    # the decoder handlings (model.decoder_norm) this term works with; a sparsity penalty's first one is what
    # `model.decoder_norm=auto` becomes (no penalty: unit)
    decoder_norms: tuple[str, ...] = ("unit", "free")
    why_decoder: str = ""  # said when the SAE's handling is not among them

    def __init__(self, coef: float = 1.0):
        super().__init__()
        if not isinstance(coef, (int, float)) or coef != coef or coef < 0:
            raise ConfigError(f"{self.name} coefficient {coef!r}: expected a number >= 0")
        self.coef = float(coef)

    def validate(self, sae: SAE) -> None:
        """Raise ConfigError when this term makes no sense for this SAE (checked before training)."""
        if self.is_sparsity and sae.sparsity == "structure":
            raise ConfigError(f"loss={self.name} on {type(sae).__name__}: this SAE sets its sparsity "
                              "structurally; use loss=none")
        if sae.decoder_norm not in self.decoder_norms:
            raise ConfigError(f"loss={self.name} with model.decoder_norm={sae.decoder_norm}: expected "
                              f"model.decoder_norm={' or '.join(self.decoder_norms)} (or auto){self.why_decoder}")

    def forward(self, x_BD: Tensor, out: SAEOutput, sae: SAE) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
