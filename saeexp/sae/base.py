"""The SAE contract every variant follows: parameters, the named forward output, decoder-norm handling.

Shapes: B tokens, D = d_in, F = d_sae. `W_enc` is [D, F], `W_dec` is [F, D]; the standard encoder is
`(x - b_dec) @ W_enc + b_enc`. A variant overrides `activation` (and, if it has more encoder
parameters, `encode_pre` and `encoder_weights`); everything else is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from saeexp.errors import ConfigError

DecoderNorm = Literal["unit", "free"]
DECODER_NORMS: tuple[DecoderNorm, ...] = ("unit", "free")
# decoder rows' norm at init when the config leaves it to the handling (Anthropic, April 2024 update: 0.1 when free)
INIT_DEC_NORM = {"unit": 1.0, "free": 0.1}


@dataclass
class SAEOutput:
    """Everything a loss term, metric or resampler may need from one forward pass."""

    x_hat_BD: Tensor  # reconstruction
    acts_BF: Tensor  # feature activations f(x)
    pre_BF: Tensor  # encoder pre-activations
    # a variant's own loss terms, already weighted (gated auxiliary reconstruction, TopK's AuxK, ...)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    # a variant's other intermediates (gate pre-activations, thresholds, ...)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def fired_F(self) -> Tensor:
        """Which features fired on some token of the batch (bool [F])."""
        return self.acts_BF.detach().amax(dim=0) > 0


class SAE(nn.Module):
    """Standard (ReLU) sparse autoencoder; variants subclass it and replace `activation`."""

    # --- capabilities, declared: the trainer, loss terms, resampler and fine-tuning read these, never probe -----
    # encoder weights: multiplied by the input scale when it is folded into saved weights
    encoder_weights: ClassVar[tuple[str, ...]] = ("W_enc",)
    # the per-feature encoder parameters and the dimension that indexes features: a resample rewrites them
    # (2-D: set to the new direction; 1-D: set to 0), fine-tuning's encoder methods train them
    encoder_rows: ClassVar[tuple[tuple[str, int], ...]] = (("W_enc", 1), ("b_enc", 0))
    # the encoder is (x - b_dec) W_enc + b_enc, so b_dec can be folded into b_enc (fine-tuning)
    has_encoder_bias: ClassVar[bool] = True
    # how sparsity comes: "penalty" (training needs a sparsity term with a coefficient > 0) or "structure"
    # (the architecture selects; a sparsity penalty is refused)
    sparsity: ClassVar[Literal["penalty", "structure"]] = "penalty"
    # the knob that sets this SAE's sparsity: "coefficient" (the penalty's lambda, `loss.l1` or `loss.l0`) or "k"
    # (`model.k`); runs are tagged with it and `train.target_l0` acts through it (saeexp.train.target_l0)
    sparsity_control: ClassVar[Literal["coefficient", "k"]] = "coefficient"
    # out.extras["l0"] is a differentiable L0 estimate (what `loss=l0` penalises)
    provides_l0: ClassVar[bool] = False
    # the names of the SAE's own loss terms in out.aux_losses: each one's coefficient is the attribute of the same
    # name, and the term is there in training mode when that coefficient is > 0
    aux_terms: ClassVar[tuple[str, ...]] = ()

    tokens_since_fired: Tensor

    @property
    def revives_dead(self) -> bool:
        """Whether the SAE revives its own dead latents (TopK's AuxK), so resampling would duplicate it."""
        return False

    def __init__(self, d_in: int, d_sae: int, decoder_norm: str = "unit", init_dec_norm: float | None = None,
                 enc_from_dec: bool = True, seed: int = 0):
        super().__init__()
        if not isinstance(d_in, int) or d_in < 1:
            raise ConfigError(f"d_in={d_in!r}: expected an integer >= 1")
        if not isinstance(d_sae, int) or d_sae < 1:
            raise ConfigError(f"model.d_sae={d_sae!r}: expected an integer >= 1")
        if decoder_norm not in DECODER_NORMS:
            raise ConfigError(f"model.decoder_norm={decoder_norm!r}: expected one of {DECODER_NORMS}")
        init_dec_norm = INIT_DEC_NORM[decoder_norm] if init_dec_norm is None else init_dec_norm
        self.d_in, self.d_sae, self.decoder_norm = d_in, d_sae, decoder_norm
        gen = torch.Generator().manual_seed(seed)
        # decoder rows: random directions of norm init_dec_norm
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        W_dec *= init_dec_norm / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # W_enc initialised to W_dec transposed (Anthropic, April 2024 update; Gated SAE paper)
        W_enc = W_dec.t().clone() if enc_from_dec else torch.randn(d_in, d_sae, generator=gen) / d_in**0.5
        self.W_enc = nn.Parameter(W_enc.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # tokens since each feature last fired: training bookkeeping (dead features, AuxK, resampling);
        # persistent so a resumed run continues it, but never part of the saved SAE
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    # --- the math ---------------------------------------------------------------------------------
    def encode_pre(self, x_BD: Tensor) -> Tensor:
        """Pre-activations (x - b_dec) @ W_enc + b_enc, computed as x @ W_enc + (b_enc - b_dec @ W_enc).

        Same value; but x needs no gradient, so autograd skips the product that would only feed b_dec's
        gradient through the input (b_dec still gets it, as a matrix-vector product).
        """
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x_BD, self.W_enc)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return torch.relu(pre_BF)

    def column_encoder(self, cols_N: Tensor) -> tuple[Tensor, Tensor]:
        """W_enc's columns cols_N and their bias b_enc - b_dec W_enc: `x @ W + b` are those latents'
        pre-activations, with gradient, at the cost of a product over len(cols_N) columns only."""
        W_DN = self.W_enc.index_select(1, cols_N)
        return W_DN, self.b_enc[cols_N] - self.b_dec @ W_DN

    def encode(self, x_BD: Tensor) -> Tensor:
        """Feature activations f(x)."""
        return self.activation(self.encode_pre(x_BD))

    def decode(self, acts_BF: Tensor) -> Tensor:
        """Reconstruction f @ W_dec + b_dec."""
        return torch.addmm(self.b_dec, acts_BF, self.W_dec)

    def forward(self, x_BD: Tensor) -> SAEOutput:
        pre_BF = self.encode_pre(x_BD)
        acts_BF = self.activation(pre_BF)
        return SAEOutput(self.decode(acts_BF), acts_BF, pre_BF)

    # --- decoder-norm handling (an option of the SAE, applied around the optimiser step) ----------
    @property
    def unit_norm(self) -> bool:
        return self.decoder_norm == "unit"

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    # --- what a sparsity penalty sees (gated SAEs penalise the gate, not f) -------------------------
    def sparsity_acts(self, out: SAEOutput) -> Tensor:
        """The non-negative activations an L1 penalty is on; f(x) unless a variant says otherwise."""
        return out.acts_BF

    def penalty_decoder_norms(self) -> Tensor:
        """Decoder norms weighting a decoder-norm L1 penalty; a variant may detach them."""
        return self.decoder_norms()

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component parallel to each (unit) decoder row, before the optimiser step."""
        if self.W_dec.grad is None:
            return
        W, G = self.W_dec, self.W_dec.grad
        G -= (G * W).sum(dim=1, keepdim=True) * W

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise decoder rows to unit norm, after the optimiser step."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    # --- hooks around the optimiser step (saeexp.train.step calls them on every path) ----------------
    def before_optimizer_step(self) -> None:
        """After backward, before gradient clipping and the step: a unit-norm decoder drops the radial gradient."""
        if self.unit_norm:
            self.remove_parallel_grad()

    def after_optimizer_step(self) -> None:
        """Right after the step (before any checkpoint sees the weights): unit-norm rows renormalised."""
        if self.unit_norm:
            self.normalize_decoder()

    # --- optimiser ----------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimiser; a group's `lr_scale` multiplies the configured learning rate."""
        return [{"params": list(self.parameters())}]

    # --- bookkeeping ------------------------------------------------------------------------------
    @torch.no_grad()
    def update_firing(self, fired_F: Tensor, n_tokens: int) -> None:
        """After a batch of `n_tokens`: reset the counter of every feature that fired (`out.fired_F()`), advance
        the rest."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired.masked_fill_(fired_F, 0)

    def dead_mask(self, window_tokens: int) -> Tensor:
        return self.tokens_since_fired >= window_tokens

    # --- artifacts --------------------------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make the SAE take raw inputs: it was trained on x * scale, so fold scale into the weights.

        pre = (s x - b_dec) W_enc + b_enc = (x - b_dec / s)(s W_enc) + b_enc, and the output is divided
        by s: W_dec / s, b_dec / s. Feature activations are unchanged.
        """
        for name in self.encoder_weights:
            getattr(self, name).mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def artifact_state(self) -> dict[str, Tensor]:
        """Tensors of the saved SAE: the state dict without training bookkeeping."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != "tokens_since_fired"}
