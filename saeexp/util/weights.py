"""Checks on weights read from a file before any SAE uses them."""
from __future__ import annotations

import torch

from saeexp.errors import ConfigError


def check_weights(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], file: str) -> None:
    """Refuse, naming the tensor, a shape other than the config's or a NaN/inf value: a non-finite weight makes
    every metric NaN (saved as null) without saying why."""
    for name, t in tensors.items():
        want = expected.get(name)
        if want is not None and tuple(t.shape) != tuple(want):
            raise ConfigError(f"{file!r}: {name} has shape {tuple(t.shape)}, expected {tuple(want)} from its config")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ConfigError(f"{file!r}: {name} holds {bad} non-finite value{'s' * (bad != 1)} (NaN or inf); "
                              "expected finite weights")
