"""SAE variants: one file each, all following `saeexp.sae.base.SAE`."""
from saeexp.sae.base import SAE, SAEOutput
from saeexp.sae.batchtopk import BatchTopKSAE
from saeexp.sae.gated import GatedSAE
from saeexp.sae.jumprelu import JumpReLUSAE
from saeexp.sae.relu import ReLUSAE
from saeexp.sae.scsae import SCSAE
from saeexp.sae.topk import TopKSAE

__all__ = ["SAE", "SAEOutput", "ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "BatchTopKSAE", "SCSAE"]
