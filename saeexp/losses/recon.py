"""Reconstruction: squared error averaged over tokens and over the d_in dimensions (||y - x||^2 / d)."""
import torch.nn.functional as F
from torch import Tensor

from saeexp.losses.base import LossTerm


class MSE(LossTerm):
    """Mean squared reconstruction error, the `recon` term of every SAE's loss."""

    name = "recon"

    def forward(self, x_BD: Tensor, out, sae) -> Tensor:
        return self.coef * F.mse_loss(out.x_hat_BD, x_BD)
