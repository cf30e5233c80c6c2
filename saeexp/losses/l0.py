"""L0 sparsity penalty by straight-through estimator (JumpReLU SAEs, arXiv 2407.14435)."""
from torch import Tensor

from saeexp.errors import ConfigError
from saeexp.losses.base import LossTerm


class L0(LossTerm):
    """lambda * mean over tokens of the number of active features, sum_i H(z_i - theta_i).

    The mean count comes from the SAE's forward (`extras["l0"]`), whose backward gives the threshold the
    pseudo-derivative d H / d theta and the pre-activations none; only SAEs that provide it accept this term.
    """

    name = "l0"
    coefficient_key = "l0"
    is_sparsity = True
    # an L0 count does not see the decoder's norms: either works; free rows of norm 0.1 are SAELens' JumpReLU
    decoder_norms = ("free", "unit")

    def __init__(self, l0: float):
        super().__init__(l0)

    def validate(self, sae) -> None:
        super().validate(sae)
        if not sae.provides_l0:
            raise ConfigError(f"loss={self.name} on {type(sae).__name__}: an L0 penalty needs a learned "
                              "threshold with a straight-through count (model=jumprelu); use loss=l1 here")

    def forward(self, x_BD: Tensor, out, sae) -> Tensor:
        return self.coef * out.extras["l0"]
