"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435): f = z * H(z - theta), theta > 0 per feature.

The Heaviside step has no useful gradient, so the threshold learns through straight-through pseudo-derivatives
with a kernel K of bandwidth epsilon (paper, section 4):
    d f / d theta = -(theta / eps) K((z - theta) / eps)      d f / d z = H(z - theta)
    d H / d theta = -(1 / eps) K((z - theta) / eps)           d H / d z = 0
so an L0 penalty (`saeexp.losses.L0`, reading `extras["l0"]`) trains only theta.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saeexp.errors import ConfigError
from saeexp.sae.base import SAE, SAEOutput

# kernels on u = (z - theta) / eps: value and half-width of the support (both integrate to 1)
KERNELS = {
    "rectangle": (lambda u: torch.ones_like(u), 0.5),
    "triangle": (lambda u: 1.0 - u.abs(), 1.0),
}
THRESHOLD_PARAMS = ("raw", "log")


# keep(a, cond, out): a where cond > 0, else 0, written into out; same-dtype and one pass (on a CPU a
# select with a bool mask runs at half the speed, and a fresh [B, F] float tensor costs several passes)
_keep = torch.ops.aten.threshold_backward.grad_input
_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                  torch.float64: torch.int64}


class _JumpReLU(torch.autograd.Function):
    """f = z * H(z - theta) and the mean count per token of H(z - theta), with the paper's pseudo-derivatives.

    One Function: forward and backward each make one [B, F] float tensor. f > 0 exactly where z > theta
    (theta > 0), so f is the mask of d f / d z; the entries that feed theta's gradient (z inside the
    kernel's support around theta) are rare, so they are found with two compares and gathered.
    """

    @staticmethod
    def forward(ctx, z_BF: Tensor, theta_F: Tensor, eps: float, kernel: str):
        ctx.set_materialize_grads(False)  # unused outputs: None, not [B, F] zeros
        f_BF = torch.sub(z_BF, theta_F, out=torch.empty_like(z_BF, dtype=torch.float32))  # z - theta in fp32
        f_BF = _keep(z_BF, f_BF, 0.0, grad_input=f_BF) if z_BF.dtype == torch.float32 else \
            torch.where(f_BF > 0, z_BF, 0.0)
        # count of f > 0: f is +0.0 or positive, so its bits as integers are non-zero exactly where it fires
        # (counting integers is faster than counting floats on a CPU)
        l0 = torch.count_nonzero(f_BF.view(_SAME_SIZE_INT[f_BF.dtype])).to(torch.float32) / z_BF.shape[0]
        ctx.save_for_backward(z_BF, theta_F, f_BF)
        ctx.eps, ctx.kernel = eps, kernel
        return f_BF, l0

    @staticmethod
    def backward(ctx, g_f_BF: Tensor | None, g_l0: Tensor | None):
        z_BF, theta_F, f_BF = ctx.saved_tensors
        eps = ctx.eps
        g_z = None
        if g_f_BF is not None and ctx.needs_input_grad[0]:
            g_z = torch.ops.aten.threshold_backward(g_f_BF, f_BF, 0.0)  # d f / d z = H(z - theta)
        g_theta = None
        if ctx.needs_input_grad[1]:
            k_fn, half = KERNELS[ctx.kernel]
            z32_BF = z_BF if z_BF.dtype == torch.float32 else z_BF.float()
            # entries with |z - theta| < half * eps, as (z > theta - h) xor (z > theta + h), in fp32
            band_BF = torch.logical_xor(z32_BF > theta_F - half * eps, z32_BF > theta_F + half * eps)
            lin_N = band_BF.view(-1).nonzero().squeeze(1)  # flat indices: gathers by `take`, no 2-d indexing
            f_idx = lin_N % z_BF.shape[1]
            theta_N = theta_F[f_idx]
            u_N = (z32_BF.reshape(-1).take(lin_N) - theta_N) / eps
            per_N = torch.zeros_like(u_N)
            if g_f_BF is not None:  # d f / d theta = -(theta / eps) K(u)
                per_N += theta_N * g_f_BF.reshape(-1).take(lin_N).float()
            if g_l0 is not None:  # d H / d theta = -(1 / eps) K(u), for each token of the mean
                per_N += g_l0.float() / z_BF.shape[0]
            g_theta = torch.zeros_like(theta_F).index_add_(0, f_idx, per_N * k_fn(u_N)).mul_(-1.0 / eps)
        return g_z, g_theta, None, None


class JumpReLUSAE(SAE):
    """JumpReLU SAE. Parameters: W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D], and the threshold:
    `threshold` [F] (theta itself, `threshold_param="raw"`) or `log_threshold` [F] (`"log"`), always fp32.

    Defaults follow the paper rescaled to saeexp's inputs (E||x|| = sqrt(d_in) instead of E||x||^2 = 1, so
    pre-activations are sqrt(d_in) times larger): bandwidth and initial threshold 0.001 * sqrt(d_in).
    Raw theta is the default: under Adam a parameter moves about lr per step whatever its scale, so log(theta)
    moves theta by a factor (1 +- lr) per step, far slower than the lr-sized absolute steps theta needs.
    Raw theta is kept positive by a floor applied in forward with a straight-through gradient. theta is
    used, and z - theta compared, in fp32; keep the parameter fp32 (bf16 autocast does; casting the SAE to
    bf16 would round theta's lr-sized updates away).

    Training defaults (the measurements behind each: docs/training-quality.md, "JumpReLU"):
    - with the trainer's gradient clipping (`train.grad_clip`) this module reproduces SAELens' JumpReLU run
      from the same weights on the same batches (`bench/diagnostics/lockstep_saelens.py`);
    - theta learns at the configured lr (`threshold_lr_scale` 1): a larger scale costs recovery once clipped;
    - no pre-activation loss by default (`pre_act` 0, SAELens' default): `model.pre_act=1e-2` keeps latents
      alive but moves the curve off SAELens';
    - bandwidth and initial threshold 0.001 * sqrt(d_in), the paper's 0.001 at E||x||^2 = 1.
    """

    provides_l0 = True  # extras["l0"] carries the STE count that `loss=l0` penalises
    aux_terms = ("pre_act",)

    def __init__(self, d_in: int, d_sae: int, decoder_norm: str = "unit", init_dec_norm: float | None = None,
                 enc_from_dec: bool = True, seed: int = 0, bandwidth: float | None = None,
                 init_threshold: float | None = None, kernel: str = "rectangle", threshold_param: str = "raw",
                 min_threshold: float = 1e-6, threshold_lr_scale: float | None = 1.0, pre_act: float = 0.0,
                 dead_window_tokens: int = 50_000):
        super().__init__(d_in, d_sae, decoder_norm, init_dec_norm, enc_from_dec, seed)
        if kernel not in KERNELS:
            raise ConfigError(f"model.kernel={kernel!r}: expected one of {tuple(KERNELS)}")
        if threshold_param not in THRESHOLD_PARAMS:
            raise ConfigError(f"model.threshold_param={threshold_param!r}: expected one of {THRESHOLD_PARAMS}")
        default = 1e-3 * math.sqrt(d_in)
        self.bandwidth = float(bandwidth if bandwidth is not None else default)
        init_threshold = float(init_threshold if init_threshold is not None else default)
        if not self.bandwidth > 0 or not init_threshold > 0:
            raise ConfigError(f"model.bandwidth={bandwidth!r}, model.init_threshold={init_threshold!r}: "
                              "expected numbers > 0")
        self.kernel, self.threshold_param, self.min_threshold = kernel, threshold_param, float(min_threshold)
        self.threshold_lr_scale = float(threshold_lr_scale if threshold_lr_scale is not None else 1.0)
        if not self.threshold_lr_scale > 0 or not pre_act >= 0 or not dead_window_tokens >= 1:
            raise ConfigError(f"model.threshold_lr_scale={threshold_lr_scale!r}, model.pre_act={pre_act!r}, "
                              f"model.dead_window_tokens={dead_window_tokens!r}: expected > 0, >= 0, >= 1")
        self.pre_act, self.dead_window_tokens = float(pre_act), int(dead_window_tokens)
        theta_F = torch.full((d_sae,), init_threshold, dtype=torch.float32)
        if threshold_param == "log":
            self.log_threshold = nn.Parameter(theta_F.log())
        else:
            self.threshold = nn.Parameter(theta_F)

    def theta(self) -> Tensor:
        """The threshold in use, fp32 and > 0."""
        if self.threshold_param == "log":
            return self.log_threshold.float().exp()
        raw = self.threshold.float()
        # floor with a straight-through gradient: a raw value pushed below it can still come back
        return raw + (raw.clamp_min(self.min_threshold) - raw).detach()

    def _jump(self, pre_BF: Tensor) -> tuple[Tensor, Tensor]:
        return _JumpReLU.apply(pre_BF, self.theta(), self.bandwidth, self.kernel)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return self._jump(pre_BF)[0]

    def forward(self, x_BD: Tensor) -> SAEOutput:
        pre_BF = self.encode_pre(x_BD)
        acts_BF, l0 = self._jump(pre_BF)
        out = SAEOutput(self.decode(acts_BF), acts_BF, pre_BF, extras={"l0": l0})
        if self.training and self.pre_act > 0:
            out.aux_losses["pre_act"] = self.pre_act * self.pre_act_loss(x_BD)
        return out

    def pre_act_loss(self, x_BD: Tensor) -> Tensor:
        """Mean over tokens of sum over dead latents of relu(theta - z) ||W_dec row|| (zero when none is dead).

        Anthropic's pre-activation loss (January 2025 update), kept to dead latents as SAELens does: a latent
        below its threshold on every token gets no other gradient, so this alone raises z (W_enc, b_enc)
        and lowers theta until it fires again.
        """
        dead_N = self.dead_mask(self.dead_window_tokens).nonzero().squeeze(1)
        if dead_N.numel() == 0:
            return x_BD.new_zeros(())
        W_DN, b_N = self.column_encoder(dead_N)  # the dead columns' pre-activations, with gradient
        z_BN = torch.addmm(b_N, x_BD, W_DN)
        gap_N = (self.theta()[dead_N] - z_BN.float()).relu().sum(0)
        return (gap_N @ self.W_dec[dead_N].norm(dim=1).float()) / x_BD.shape[0]

    def param_groups(self) -> list[dict]:
        theta = [p for n, p in self.named_parameters() if n in ("threshold", "log_threshold")]
        rest = [p for n, p in self.named_parameters() if n not in ("threshold", "log_threshold")]
        return [{"params": rest}, {"params": theta, "lr_scale": self.threshold_lr_scale}]
