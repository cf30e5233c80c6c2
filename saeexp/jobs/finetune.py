"""Fine-tuning a trained SAE against feature suppression (reference 003), `saeexp-finetune`.

A sparsity penalty shrinks activations; training a per-feature scale s (f_s = s * f) and some parameters on
reconstruction alone recovers much of the lost reconstruction. Methods (the parameters that train):
    scale {s}   decoder {s, W_dec, b_dec}   unrotated_decoder {s, b_dec}
    encoder {s, W_enc, b_enc}   unrotated_encoder {s, b_enc}   unrotated_all {s, b_enc, b_dec}
Reference 003's SAE has no b_dec inside the encoder; saeexp's does, so b_dec is first folded into the encoder
bias (b_enc - b_dec @ W_enc) and the decoder gets its own bias: the decoder-side methods leave every
activation, hence L0, unchanged. For variants where that fold would change activations (scsae subtracts
b_enc from its output; gated has two encoder biases) the encoder keeps its original b_dec frozen instead, and
methods that train the decoder bias are refused there (the result could not be saved as the same SAE).
Encoder weights/biases of a variant are its `encoder_rows` (gated: W_gate; b_gate, r_mag, b_mag).

The loop is `saeexp.train.step.manual_step` (the training step every path runs) with the reconstruction term
alone, rather than the Lightning training module: no penalty, resampler, sparsity warm-up or resume is
involved. ScaledSAE provides the step's SAE hooks for its trainable part. The result is saved as a normal SAE
of the same class, with s folded into the decoder rows.
"""
from __future__ import annotations

import copy
import json

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from saeexp.errors import ConfigError
from saeexp.interop import saelens
from saeexp.io import sae_dir, save_sae
from saeexp.jobs.evaluate import open_saved, out_dir
from saeexp.losses.recon import MSE
from saeexp.plan import FinetunePlan
from saeexp.report.score import score, summary, write_report
from saeexp.sae.base import SAEOutput
from saeexp.train.step import Recipe, manual_step

METHODS = ("scale", "decoder", "unrotated_decoder", "encoder", "unrotated_encoder", "unrotated_all")
TRAINS = {  # method -> (decoder weights, decoder bias, encoder weights, encoder biases)
    "scale": (False, False, False, False),
    "decoder": (True, True, False, False),
    "unrotated_decoder": (False, True, False, False),
    "encoder": (False, False, True, True),
    "unrotated_encoder": (False, False, False, True),
    "unrotated_all": (False, True, False, True),
}


class ScaledSAE(nn.Module):
    """A trained SAE (scaled input space) with a per-feature scale s and its own decoder bias.

    x_hat = (s * f(x)) @ W_dec + b_dec; f is the SAE's encoder with b_dec folded into its bias (or, where a
    fold would change f, with the original b_dec kept frozen inside it).
    """

    def __init__(self, sae, method: str, probe_BD: Tensor):
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"method={method!r}: expected one of {METHODS}")
        self.method = method
        self.sae = copy.deepcopy(sae).eval()  # eval: running statistics (batchtopk threshold) stay fixed
        self.s = nn.Parameter(torch.ones(sae.d_sae, device=sae.W_dec.device))
        self.b_dec = nn.Parameter(sae.b_dec.detach().clone())  # the decoder's own bias
        self.folded = self._fold(probe_BD)
        train_Wdec, train_bdec, train_Wenc, train_benc = TRAINS[method]
        if train_bdec and not self.folded:
            raise ConfigError(f"method={method} trains the decoder bias, which {type(sae).__name__}'s encoder also "
                              "reads and cannot be folded out of; use scale, encoder or unrotated_encoder")
        rows = self.sae.encoder_rows
        enc_w = {n for n, _ in rows if getattr(self.sae, n).ndim == 2}
        enc_b = {n for n, _ in rows if getattr(self.sae, n).ndim == 1}
        for name, p in self.sae.named_parameters():
            p.requires_grad_((name == "W_dec" and train_Wdec) or (name in enc_w and train_Wenc)
                             or (name in enc_b and train_benc))
        self.b_dec.requires_grad_(train_bdec)

    @torch.no_grad()
    def _fold(self, probe_BD: Tensor) -> bool:
        """Move b_dec into the encoder bias (b_enc - b_dec @ W_enc) if activations stay the same; else keep it."""
        sae = self.sae
        if not sae.has_encoder_bias:
            return False
        before = sae.encode(probe_BD)
        b_enc, b_dec = sae.b_enc.clone(), sae.b_dec.clone()
        sae.b_enc -= sae.b_dec @ sae.W_enc
        sae.b_dec.zero_()
        after = sae.encode(probe_BD)
        if torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().clamp_min(1.0).item()):
            return True
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
        return False

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x_BD: Tensor) -> SAEOutput:
        acts_BF = self.sae.encode(x_BD) * self.s
        return SAEOutput(torch.addmm(self.b_dec, acts_BF, self.sae.W_dec), acts_BF, acts_BF)

    # --- the training step's SAE hooks (saeexp.train.step) -------------------------------------------
    @property
    def d_in(self) -> int:
        return self.sae.d_in

    def _unit_rows_train(self) -> bool:
        return self.sae.W_dec.requires_grad and self.sae.unit_norm

    def before_optimizer_step(self) -> None:
        if self._unit_rows_train():
            self.sae.remove_parallel_grad()

    def after_optimizer_step(self) -> None:
        self.renormalize()

    def update_firing(self, fired_F: Tensor, n_tokens: int) -> None:
        """The inner SAE's firing counters stay as trained (fine-tuning changes no firing on the decoder side)."""

    @torch.no_grad()
    def to_sae(self):
        """A plain SAE of the same class computing the same x_hat: s folded into the decoder rows."""
        out = copy.deepcopy(self.sae)
        for p in out.parameters():
            p.requires_grad_(True)
        out.W_dec.mul_(self.s[:, None])
        if self.folded:  # re-express the encoder with the new decoder bias: (x - b_dec) W + b_enc + b_dec W
            out.b_enc += self.b_dec @ out.W_enc
            out.b_dec.copy_(self.b_dec)
        if (self.s != 1).any():
            out.decoder_norm = "free"  # the rows now carry s: not unit norm
        return out

    @torch.no_grad()
    def renormalize(self) -> None:
        """With a unit-norm SAE and W_dec training, keep the rows unit: s carries the norms."""
        if self._unit_rows_train():
            self.sae.normalize_decoder()


def finetune(sae, batches, input_scale: float, method: str, steps: int, lr: float = 4e-4,
             lr_decay_frac: float = 0.2, probe_BD: Tensor | None = None) -> ScaledSAE:
    """Train a ScaledSAE on reconstruction only, from raw batches; returns it (use `.to_sae()`)."""
    batch_BD = next(batches)  # raw: the step scales it
    first = batch_BD * input_scale
    model = ScaledSAE(sae, method, first if probe_BD is None else probe_BD)
    opt = torch.optim.Adam(model.trainable(), lr=lr, fused=True)
    decay = max(1, int(round(steps * lr_decay_frac))) if lr_decay_frac > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (steps - t) / decay) if decay else 1.0)
    recipe, terms = Recipe(input_scale=input_scale), [MSE()]
    for step in tqdm(range(steps), desc=f"saeexp-finetune ({method})", unit="step", mininterval=5):
        manual_step(model, terms, opt, batch_BD, step, recipe)
        sched.step()
        batch_BD = next(batches)
    return model


KEYS = ("mse", "fvu", "l2_ratio", "l0", "gamma", "dead", "ce_loss_recovered")


def finetune_saved(plan: FinetunePlan) -> dict:
    """`saeexp-finetune sae=<saved SAE or run dir> method=decoder`: fine-tune, score before/after, save."""
    saved = plan.saved
    if plan.method not in METHODS:
        raise ConfigError(f"method={plan.method!r}: expected one of {METHODS}")
    out = out_dir(saved, "finetune", f"_{plan.method}", "sae")  # refused before the work, not after
    sae, meta, scale = open_saved(saved)
    path, source, batch = saved.path, saved.source, saved.batch_size
    sdir = sae_dir(path)
    sae.fold_input_scale(1.0 / scale)  # work in the scaled space the SAE was trained in
    torch.manual_seed(saved.seed)
    before, _ = score(sae, source, scale, batch)
    steps = max(1, plan.tokens // batch)
    model = finetune(sae, source.batches(batch, seed=saved.seed + 1), scale, plan.method, steps, plan.lr,
                     plan.lr_decay_frac)
    tuned = model.to_sae()
    after, arrays = score(tuned, source, scale, batch)

    raw = copy.deepcopy(tuned).cpu()
    raw.fold_input_scale(scale)
    variant = None
    if "saelens" in meta:
        model_cfg = saelens.load(path)[1]["model_cfg"]
    else:
        spec = yaml.safe_load((sdir / "config.yaml").read_text())  # checked by load_sae
        model_cfg, variant = spec["model"], spec.get("variant")
    if "decoder_norm" in model_cfg:
        model_cfg["decoder_norm"] = tuned.decoder_norm
    meta = {k: v for k, v in meta.items() if k not in ("conventions", "saelens")}
    save_sae(raw, out / "sae", model_cfg, {**meta,
                                          "finetune": {"method": plan.method, "from": str(sdir), "steps": steps,
                                                       "tokens": steps * batch}}, variant=variant)
    scalars = {**after, **{f"before/{k}": v for k, v in before.items() if isinstance(v, (int, float))}}
    result = write_report(scalars, arrays, out, prefix="finetune")
    s = model.s.detach()
    table = {k: (before.get(k), after.get(k)) for k in KEYS if k in before}
    (out / "finetune_summary.json").write_text(json.dumps(
        {"method": plan.method, "before_after": table, "scale_mean": s.mean().item(),
         "scale_min": s.min().item(), "scale_max": s.max().item(), "folded_b_dec": model.folded}, indent=2))
    print(f"saeexp-finetune: {plan.method} on {sdir}, {steps} steps\n"
          + "\n".join(f"  {k:18s} before {b:.5g}  after {a:.5g}" for k, (b, a) in table.items()
                      if isinstance(b, (int, float)) and isinstance(a, (int, float)))
          + f"\n  after: {summary(result)}\n  SAE: {out / 'sae'}")
    return {"before": before, "after": after, "out": str(out)}
