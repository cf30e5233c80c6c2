"""The standard ReLU SAE (Towards Monosemanticity, 2023): f = ReLU((x - b_dec) @ W_enc + b_enc)."""
from saeexp.sae.base import SAE


class ReLUSAE(SAE):
    """Standard SAE; all of its math is the shared base."""
