"""Loss terms: reconstruction, sparsity penalties and extra terms, each a small `LossTerm`."""
from saeexp.losses.base import LossTerm
from saeexp.losses.l0 import L0
from saeexp.losses.l1 import L1, L1DecoderNorm
from saeexp.losses.recon import MSE

__all__ = ["LossTerm", "MSE", "L1", "L1DecoderNorm", "L0"]
