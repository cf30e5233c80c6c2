"""What the decoder-orthogonality term (neighbour-list mode) adds to a training step.

    python bench/bench_ortho.py             # d_in 512, batch 4096, width 16384, fp32 (the issue's target: <= 15%)
    python bench/bench_ortho.py --quick     # width 4096, fewer repeats

A step is the standard SAE's (forward, recon + L1, backward, decoder-norm handling, fused Adam), as in
bench_variants.py. The ortho step adds the term (`pairs=nearest`, m neighbours) with its per-step cost, and the
neighbour-list rebuild (blockwise, every K steps) and the re-choice of each feature's nearest among its m
candidates (every `rerank_every` steps) are timed on their own and charged at 1/K and 1/rerank_every per step. Steps with
and without the term are interleaved within each repeat and the median kept, so machine load moves both
together: quote the ratio, not the seconds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeexp.losses import L1, MSE
from saeexp.losses.ortho import DecoderOrthogonality
from saeexp.sae import ReLUSAE


def make_step(sae, terms):
    opt = torch.optim.Adam(sae.parameters(), lr=4e-5, fused=True)

    def step(x_BD):
        out = sae(x_BD)
        loss = sum(t(x_BD, out, sae) for t in terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()

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
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.width, a.reps = 4096, 3
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
    times = {k: [] for k in steps}
    refresh, rerank = [], []
    term = variants["ortho"][-1]
    for _ in range(a.reps):
        for k, s in steps.items():
            times[k].append(timed(s, x))
        refresh.append(timed(term.refresh, sae.W_dec))
        rerank.append(timed(term.rerank, sae.W_dec))
    base = statistics.median(times["base"])
    rebuild, rechoose = statistics.median(refresh), statistics.median(rerank)
    print(f"width {a.width}, d_in {a.d_in}, batch {a.batch}, fp32, {torch.get_num_threads()} threads, "
          f"m={a.neighbours}, K={a.refresh_every}, {a.reps} interleaved repeats (median)")
    print(f"  base step            {base:8.3f} s")
    print(f"  neighbour-list build {rebuild:8.3f} s  (= {rebuild / base:.2f} steps; charged 1/K per step)")
    print(f"  nearest re-choice    {rechoose:8.3f} s  (= {rechoose / base:.2f} steps; charged 1/{a.rerank_every} "
          "per step)")
    for k in ("ortho", "ortho_active"):
        t = statistics.median(times[k])
        total = t + rebuild / a.refresh_every + rechoose / a.rerank_every
        print(f"  {k:20s} {t:8.3f} s  per-step overhead {t / base - 1:+6.1%}, amortised total "
              f"{total / base - 1:+6.1%}  (target <= +15%)")


if __name__ == "__main__":
    main()
