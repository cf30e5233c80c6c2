"""Activations made from a planted dictionary of unit-norm directions, so recovery can be scored."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from saeexp.data.base import ActivationSource
from saeexp.errors import ConfigError

MAGNITUDES = ("exponential", "uniform", "constant")


class SyntheticSource(ActivationSource):
    """x = sum_i a_i m_i d_i + noise, with d_i unit-norm truth directions.

    Feature i fires (a_i = 1) with probability p_i = max_p * (i + 1) ** -alpha (a power law); magnitudes
    m_i follow `magnitude` with mean `mean_magnitude`, never below `min_magnitude` (a feature that fires
    at a near-zero magnitude is indistinguishable from one that does not). `groups` groups of `group_size`
    features (the most frequent after feature 0 ... taken in order) also fire all together with probability `group_p`,
    the co-occurrence that tempts an L1 SAE to learn combinations (reference 004). Batch k is a pure
    function of (seed, k); the held-out set uses its own seed stream, so it is never trained on.
    """

    def __init__(self, d_in: int = 32, n_features: int = 128, max_p: float = 0.05, alpha: float = 0.5,
                 magnitude: str = "exponential", mean_magnitude: float = 1.0, min_magnitude: float = 0.0,
                 noise: float = 0.0,
                 groups: int = 0, group_size: int = 3, group_p: float = 0.01, heldout_tokens: int = 16384,
                 seed: int = 0):
        if magnitude not in MAGNITUDES:
            raise ConfigError(f"data.magnitude={magnitude!r}: expected one of {MAGNITUDES}")
        if not 0 < max_p <= 1:
            raise ConfigError(f"data.max_p={max_p!r}: expected a probability in (0, 1]")
        if groups * group_size > n_features:
            raise ConfigError(f"data.groups * data.group_size = {groups * group_size} exceeds "
                              f"data.n_features={n_features}")
        if not 0 <= min_magnitude <= mean_magnitude:
            raise ConfigError(f"data.min_magnitude={min_magnitude!r}: expected 0 <= it <= data.mean_magnitude")
        self.d_in, self.n_features, self.noise = d_in, n_features, noise
        self.min_magnitude = min_magnitude
        self.magnitude, self.mean_magnitude = magnitude, mean_magnitude
        self.groups, self.group_size, self.group_p = groups, group_size, group_p
        self.heldout_tokens, self.seed = heldout_tokens, seed
        # not manual_seed(seed): an SAE draws its initial decoder as randn(d_sae, d_in) from exactly that
        # stream, so with data.seed == seed (the default) its first rows would start on the truth
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 5)
        D = torch.randn(n_features, d_in, generator=gen)
        self.truth_ND = D / D.norm(dim=1, keepdim=True)
        self.p_N = max_p * (torch.arange(n_features, dtype=torch.float32) + 1) ** -alpha

    def truth(self) -> Tensor:
        return self.truth_ND

    def truth_density(self) -> Tensor:
        # a group member fires alone (p_i) or with its group (group_p), independently
        p_N = self.p_N.clone()
        n = self.groups * self.group_size
        p_N[:n] = 1 - (1 - p_N[:n]) * (1 - self.group_p)
        return p_N

    def _generate(self, n: int, gen: torch.Generator) -> Tensor:
        return self.draw(n, gen)[1]

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """n tokens from `gen`: (true feature activations [n, n_features], x [n, d_in])."""
        on_BN = torch.rand(n, self.n_features, generator=gen) < self.p_N
        if self.groups:
            fire_BG = torch.rand(n, self.groups, generator=gen) < self.group_p
            members = fire_BG.repeat_interleave(self.group_size, dim=1)
            on_BN[:, :members.shape[1]] |= members
        lo, spread = self.min_magnitude, self.mean_magnitude - self.min_magnitude  # mean = lo + spread
        if self.magnitude == "exponential":
            mag = lo + torch.empty(n, self.n_features).exponential_(1.0 / max(spread, 1e-12), generator=gen)
        elif self.magnitude == "uniform":
            mag = lo + torch.rand(n, self.n_features, generator=gen) * 2 * spread
        else:
            mag = torch.full((n, self.n_features), float(self.mean_magnitude))
        codes_BN = on_BN * mag
        x_BD = codes_BN @ self.truth_ND
        if self.noise:
            x_BD += self.noise * torch.randn(n, self.d_in, generator=gen)
        return codes_BN, x_BD

    def heldout(self) -> Tensor:
        return self._generate(self.heldout_tokens, torch.Generator().manual_seed(self.seed * 1_000_003 + 17))

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        k = start
        while True:
            gen = torch.Generator().manual_seed(hash((self.seed, seed, k)) & 0x7FFF_FFFF_FFFF)
            yield self._generate(batch_size, gen)
            k += 1

    def describe(self) -> dict:
        return {"n_features": self.n_features, "expected_l0": float(self.p_N.sum())}
