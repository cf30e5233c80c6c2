"""What the decoder-orthogonality term (neighbour-list mode) adds to a training step.

    python bench/speed/bench_ortho.py             # d_in 512, batch 4096, width 16384, fp32 (the issue's target: <= 15%)
    python bench/speed/bench_ortho.py --quick     # width 4096, fewer repeats

A step is the standard SAE's (forward, recon + L1, backward, decoder-norm handling, fused Adam), as in
bench_variants.py. The ortho step adds the term (`pairs=nearest`, m neighbours) with its per-step cost, and the
neighbour-list rebuild (blockwise, every K steps) and the re-choice of each feature's nearest among its m
candidates (every `rerank_every` steps) are timed on their own and charged at 1/K and 1/rerank_every per step.
Steps with and without the term share the SAE and the input; each repeat times them back to back and the
median of the per-repeat ratios is reported, so load that drifts between repeats cancels: quote the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeexp.losses import L1, MSE
from saeexp.losses.ortho import DecoderOrthogonality
from saeexp.sae import ReLUSAE
from saeexp.train.step import manual_step


def make_step(sae, terms):
    opt = torch.optim.Adam(sae.parameters(), lr=4e-5, fused=True)

    def step(x_BD):
        manual_step(sae, terms, opt, x_BD)

    return step


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--neighbours", type=int, default=8)
    ap.add_argument("--refresh-every", type=int, default=100)
    ap.add_argument("--rerank-every", type=int, default=10)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.width, a.reps = 4096, 4
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.d_in) * 1.0
    sae = ReLUSAE(a.d_in, a.width)
    variants = {
        "base": [MSE(1.0), L1(5e-3)],
        "ortho": [MSE(1.0), L1(5e-3), DecoderOrthogonality(0.1, "nearest", neighbours=a.neighbours,
                                                           refresh_every=10**9)],
        "ortho_active": [MSE(1.0), L1(5e-3), DecoderOrthogonality(0.1, "nearest", "active",
                                                                  neighbours=a.neighbours, refresh_every=10**9)],
    }
    steps = {k: make_step(sae, v) for k, v in variants.items()}
    for s in steps.values():  # warm-up (builds each neighbour list once)
        s(x)
    # paired: each repeat times the three steps back to back (in a rotating order) and keeps the ratios to
    # that repeat's base step, so load that drifts between repeats cancels
    ratios = {k: [] for k in steps if k != "base"}
    raw = {k: [] for k in steps}
    names = list(steps)
    for r in range(a.reps):
        order = names[r % 3:] + names[:r % 3]
        t = {k: timed(steps[k], x) for k in order}
        for k in raw:
            raw[k].append(t[k])
        for k in ratios:
            ratios[k].append(t[k] / t["base"])
    base_times = raw["base"]
    # the term alone (forward + backward), the least disturbed of a few repeats
    out = sae(x[:8])
    alone = []
    for _ in range(3):
        t0 = time.perf_counter()
        variants["ortho"][-1](x, out, sae).backward()
        alone.append(time.perf_counter() - t0)
    sae.zero_grad(set_to_none=True)
    term = variants["ortho"][-1]
    rebuild = min(timed(term.refresh, sae.W_dec) for _ in range(2))
    rechoose = min(timed(term.rerank, sae.W_dec) for _ in range(2))
    base = statistics.median(base_times)
    print(f"width {a.width}, d_in {a.d_in}, batch {a.batch}, fp32, {torch.get_num_threads()} threads, "
          f"m={a.neighbours}, K={a.refresh_every}, rerank every {a.rerank_every}, {a.reps} paired repeats")
    print(f"  base step            {base:8.3f} s (median)")
    print(f"  neighbour-list build {rebuild:8.3f} s  (= {rebuild / base:.2f} steps; charged 1/K per step)")
    print(f"  nearest re-choice    {rechoose:8.3f} s  (= {rechoose / base:.2f} steps; charged 1/{a.rerank_every} "
          "per step)")
    amortised = (rebuild / a.refresh_every + rechoose / a.rerank_every) / min(base_times)
    for k, rs in ratios.items():
        step_over = statistics.median(rs) - 1
        min_over = min(raw[k]) / min(base_times) - 1
        print(f"  {k:20s} per-step overhead: median of paired ratios {step_over:+6.1%} (repeats "
              f"{', '.join(f'{v - 1:+.1%}' for v in rs)}); fastest vs fastest {min_over:+6.1%}")
    term_over = min(alone) / min(base_times)
    print(f"  term alone (fwd+bwd) {min(alone):8.3f} s  = {term_over:+6.1%} of the fastest base step")
    print(f"  amortised rebuild + re-choice {amortised:+6.1%};  estimate per step: term alone + amortised = "
          f"{term_over + amortised:+6.1%}  (target <= +15%)")


if __name__ == "__main__":
    main()
