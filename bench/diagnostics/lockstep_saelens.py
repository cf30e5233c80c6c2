"""Lockstep: saeexp's SAE and SAELens' from identical weights on identical batches, step by step.

Runs with the python of SAELens' venv, like bench/quality/saelens_train.py:

    PY=$(scripts/saelens-venv.sh)
    $PY bench/diagnostics/lockstep_saelens.py --arch jumprelu --coef 1    # both, divergence every 100 steps
    $PY bench/diagnostics/lockstep_saelens.py --arch jumprelu --coef 1 --no-saelens --clip none   # saeexp, no clip

The data is the quality benchmark's set 1 (bench/quality/quality_sets.py) in saeexp's `data=file` order for seed 0,
with the benchmark's recipe: batch 4096, Adam lr 4e-3 with the last 20% decayed linearly, the coefficient
warmed up over the first 5%. SAELens' side is its `training_forward_pass` with its trainer's step (clip the
gradient norm at 1, Adam, clamp the threshold at 0). saeexp's side is the variant's module with saeexp's loss
terms at saeexp's scale (squared error averaged over d_in, so SAELens' coefficient / d_in, `train.grad_clip`
on the summed scale): Adam's update is invariant to that scale except through its eps.
It shows what in saeexp's trainer differs from SAELens' when the variant's math does not: the SAE starts from
SAELens' initial weights here, not saeexp's data-fitted init, and `--ours` sets the variant's options.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent / "quality")]

from quality_sets import RECIPE, build, heldout  # noqa: E402

from saeexp.data.file import FileSource  # noqa: E402
from saeexp.losses import L0, L1DecoderNorm  # noqa: E402
from saeexp.losses.recon import MSE  # noqa: E402
from saeexp.metrics import ground_truth_recovery  # noqa: E402
from saeexp.sae import JumpReLUSAE, ReLUSAE  # noqa: E402
from saeexp.train.step import clip_grad, make_optimizer  # noqa: E402

# SAELens' defaults for these architectures, as saeexp options (bandwidth, initial threshold, theta's lr)
SAELENS_LIKE = {"jumprelu": dict(bandwidth=0.05, init_threshold=0.01, threshold_lr_scale=1.0, pre_act=0.0),
                "standard": {}}


def build_pair(arch: str, d_in: int, width: int, coef: float, warm_steps: int, ours_kw: dict):
    import sae_lens as sl

    if arch == "jumprelu":
        peer = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(
            d_in=d_in, d_sae=width, l0_coefficient=coef, l0_warm_up_steps=warm_steps))
        ours = JumpReLUSAE(d_in, width, decoder_norm="free", init_dec_norm=0.1,
                           **{**SAELENS_LIKE[arch], **ours_kw})
        penalty, key = L0(coef / d_in), "l0"
    else:
        peer = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(
            d_in=d_in, d_sae=width, l1_coefficient=coef, l1_warm_up_steps=warm_steps))
        ours = ReLUSAE(d_in, width, decoder_norm="free", init_dec_norm=0.1, **ours_kw)
        penalty, key = L1DecoderNorm(coef / d_in), "l1"
    with torch.no_grad():
        for name, p in peer.named_parameters():
            getattr(ours, name).copy_(p)
    return peer, ours, penalty, key


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(SAELENS_LIKE), default="jumprelu")
    ap.add_argument("--coef", type=float, required=True, help="SAELens' coefficient (saeexp's is coef / d_in)")
    ap.add_argument("--steps", type=int, default=None, help="stop early (the lr schedule is the full run's)")
    ap.add_argument("--clip", default="1", help="saeexp's train.grad_clip (summed scale), or none")
    ap.add_argument("--ours", default="{}", help="JSON of options for saeexp's variant, e.g. '{\"pre_act\": 0.01}'")
    ap.add_argument("--no-saelens", dest="saelens", action="store_false", help="train saeexp's side only")
    a = ap.parse_args(argv)
    spec = build(1)
    d_in, width, B = spec["data"]["d_in"], spec["width"], RECIPE["batch"]
    steps = spec["tokens"] // B
    warm, decay = int(steps * RECIPE["sparsity_warmup_frac"]), int(steps * RECIPE["decay_frac"])
    clip = None if a.clip == "none" else float(a.clip)
    torch.manual_seed(0)
    peer, ours, penalty, key = build_pair(a.arch, d_in, width, a.coef, warm, json.loads(a.ours))
    terms = [MSE(1.0), penalty]
    opt_o = make_optimizer(lambda params: torch.optim.Adam(params, lr=RECIPE["lr"]), ours)
    opt_p = torch.optim.Adam(peer.parameters(), lr=RECIPE["lr"])
    base_lr = [g["lr"] for g in opt_o.param_groups]
    from sae_lens.saes.sae import TrainStepInput

    since_fired = torch.zeros(width)
    source = FileSource(spec["path"], d_in=d_in, heldout_tokens=spec["heldout"])
    t0 = time.perf_counter()
    for i, x in enumerate(source.batches(B, seed=0)):
        if i >= (a.steps or steps):
            break
        lr_f = 1.0 if i < steps - decay else (steps - i) / decay
        warm_f = min(1.0, i / warm) if warm else 1.0  # SAELens' scheduler: 0 at the first step
        for g, lr in zip(opt_o.param_groups, base_lr):
            g["lr"] = lr * lr_f
        for g in opt_p.param_groups:
            g["lr"] = RECIPE["lr"] * lr_f
        out = ours(x)
        loss = sum(t(x, out, ours) * (warm_f if t.is_sparsity else 1.0) for t in terms) + \
            sum(out.aux_losses.values(), torch.zeros(()))
        loss.backward()
        g_ours = {n: p.grad.clone() for n, p in ours.named_parameters()}
        clip_grad(ours, clip)
        opt_o.step()
        opt_o.zero_grad()
        ours.update_firing(out.fired_F(), out.acts_BF.shape[0])  # dead-latent bookkeeping (JumpReLU's pre-activation loss reads it)
        if a.saelens:
            peer_out = peer.training_forward_pass(TrainStepInput(
                sae_in=x, dead_neuron_mask=since_fired > 1000, coefficients={key: a.coef * warm_f},
                n_training_steps=i, is_logging_step=False))
            peer_out.loss.backward()
            g_peer = {n: p.grad.clone() for n, p in peer.named_parameters()}
            torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
            opt_p.step()
            opt_p.zero_grad()
            with torch.no_grad():
                if a.arch == "jumprelu":
                    peer.threshold.data.clamp_(min=0.0)
            since_fired += 1
            since_fired[peer_out.feature_acts.bool().any(0)] = 0
            if i < 3 or i % 100 == 0:
                grads = " ".join(f"{n} {rel(g_ours[n] * d_in, g):.1e}" for n, g in g_peer.items())
                params = " ".join(f"{n} {rel(getattr(ours, n), p):.1e}" for n, p in peer.named_parameters())
                l0_p = (peer_out.feature_acts > 0).float().sum(1).mean()
                print(f"step {i:4d}  L0 saelens {l0_p:6.1f} saeexp {(out.acts_BF > 0).float().sum(1).mean():6.1f}"
                      f"  | grad rel. diff (before the step): {grads}  | param rel. diff (after): {params}", flush=True)
    x_h, _, truth = heldout(spec)
    sides = ([("saelens", peer)] if a.saelens else []) + [("saeexp", ours)]
    for name, sae in sides:
        with torch.no_grad():
            if name == "saelens":
                acts, _ = peer.encode_with_hidden_pre(x_h)
                x_hat = peer.decode(acts)
            else:
                o = ours(x_h)
                acts, x_hat = o.acts_BF, o.x_hat_BD
        fvu = float((x_hat - x_h).pow(2).sum() / (x_h - x_h.mean(0)).pow(2).sum())
        rec = ground_truth_recovery(truth.float(), sae.W_dec.detach())["gt_recovered@0.9"]
        print(f"{name:8s} {a.arch} coef {a.coef:g} clip {a.clip} ours {a.ours}: L0 {(acts > 0).float().sum(1).mean():.2f}"
              f"  FVU {fvu:.3f}  recovered@0.9 {rec:.3f}  dead {float((acts.sum(0) == 0).float().mean()):.3f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
