"""SAE variants: one file each, all following `saeexp.sae.base.SAE`."""
from saeexp.sae.base import SAE, SAEOutput
from saeexp.sae.relu import ReLUSAE

__all__ = ["SAE", "SAEOutput", "ReLUSAE"]
