"""Bytes per latent of one training step: parameters, Adam state and the step's buffers (README, Scale).

    python bench/speed/bench_bytes_per_latent.py                   # relu and topk, d_in 576, batch 1024 and 4096
    python bench/speed/bench_bytes_per_latent.py --d-in 2304 --widths 4096 8192

Each (variant, width, batch) runs in a fresh process: the SAE and its Adam optimiser as the trainer builds
them, two steps of saeexp.train.step.manual_step on CPU fp32, and the peak resident memory above what the
process held before building the SAE (wait4's ru_maxrss). The slope between two widths is the bytes one more
latent costs; with two batch sizes it splits into a part per d_in (weights, gradients, Adam's two moments:
16 bytes per float32 parameter, 2 d_in + 1 of them per latent) and a part per token of the batch (the [B, F]
buffers of the forward and backward). CPU RSS counts the same tensors a GPU allocates, give or take the
allocators' rounding; the fp32 weights and Adam state are what bf16-mixed keeps too (its [B, F] buffers are
partly bf16, so the per-token part is an upper bound there).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, resource, sys, torch
sys.path.insert(0, {here!r})
from bench_variants import make, make_step
from saeexp.train.memory import reuse_freed_memory
reuse_freed_memory()  # as the trainer does (train.reuse_memory)
torch.set_num_threads(1)
x = torch.randn({batch}, {d_in})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step = make_step(*make({variant!r}, {d_in}, {width}, 64, 0.1))
for _ in range(2):
    step(x)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before))
"""


def peak_kib(variant: str, d_in: int, width: int, batch: int) -> int:
    code = CHILD.format(here=str(HERE), variant=variant, d_in=d_in, width=width, batch=batch)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["relu", "topk"])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--widths", type=int, nargs=2, default=[2048, 8192])
    p.add_argument("--batches", type=int, nargs=2, default=[1024, 4096])
    a = p.parse_args()
    (w0, w1), (b0, b1), d = a.widths, a.batches, a.d_in
    print(f"d_in {d}; bytes per latent = peak RSS slope between widths {w0} and {w1} (CPU fp32, Adam)")
    print(f"{'variant':<8} {'batch':>6} {'B/latent':>10} {'fixed/latent':>13} {'per token':>10}")
    for v in a.variants:
        slope = {}
        for b in (b0, b1):
            slope[b] = (peak_kib(v, d, w1, b) - peak_kib(v, d, w0, b)) * 1024 / (w1 - w0)
        per_token = (slope[b1] - slope[b0]) / (b1 - b0)  # bytes per latent per token of the batch
        fixed = slope[b0] - per_token * b0  # what does not grow with the batch: weights, grads, Adam
        for b in (b0, b1):
            print(f"{v:<8} {b:>6} {slope[b]:>10.0f} {fixed:>13.0f} {per_token:>10.1f}", flush=True)
        print(f"  {v}: fixed {fixed / d:.1f} bytes per latent per d_in (16 x 2 = 32 for fp32 weights, grads, Adam)")


if __name__ == "__main__":
    main()
