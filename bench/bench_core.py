"""Training-step throughput of saeexp's own loop (Lightning) against a bare PyTorch loop and the matmul limit.

    python bench/bench_core.py            # d_in 512, batch 4096, widths 4096 and 16384, fp32
    python bench/bench_core.py --quick    # width 4096 only, fewer repeats

Three implementations, interleaved within each repeat (the median over repeats is kept, so machine load
moves them together; quote the ratios, not the tokens/s):
- limit: the standard step's six matrix products (12 * batch * d_in * width FLOPs), bare `torch.mm` into
  preallocated buffers (from bench_variants.make_limit);
- bare: a hand-written PyTorch loop of saeexp's math (ReLU SAE, MSE + L1, unit-norm decoder with the parallel
  gradient removed, fused Adam), no Lightning, no logging;
- saeexp: `SAEModule` inside a real `lightning.Trainer` (the CLI's trainer settings, logging every 50 steps to
  an in-memory logger), timed per step from batch start to batch start, excluding `fit()` start-up;
  `saeexp` without gradient clipping, `+clip` with the CLI's default `train.grad_clip` (issue 8's fix).
Targets (issue 2): saeexp >= 0.9 of the limit at both widths, and at most 3% slower than bare.
"""
from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from bench_variants import make_limit
from saeexp.data.base import ActivationSource
from saeexp.losses import L1
from saeexp.sae import ReLUSAE
from saeexp.train.datamodule import ActivationDataModule
from saeexp.train.module import SAEModule


class _Fixed(ActivationSource):
    """The same pre-made batch forever: the benchmark measures the step, not the data."""

    def __init__(self, x):
        self.x, self.d_in = x, x.shape[1]

    def batches(self, batch_size, seed, start=0):
        while True:
            yield self.x


class _NullLogger(Logger):
    name, version = "null", 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *a, **k):
        pass


class _StepClock(Callback):
    def __init__(self):
        self.starts = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.starts.append(time.perf_counter())


def bare_loop(x, width, coef=5e-3):
    """saeexp's math written out by hand: what a careful researcher would write without a framework."""
    d_in = x.shape[1]
    sae = ReLUSAE(d_in, width)  # only for identical initial weights
    W_enc, b_enc, W_dec, b_dec = (torch.nn.Parameter(p.detach().clone()) for p in
                                  (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=4e-4, fused=True)

    def step(_):
        pre = torch.addmm(b_enc - b_dec @ W_enc, x, W_enc)
        f = torch.relu(pre)
        x_hat = torch.addmm(b_dec, f, W_dec)
        loss = torch.nn.functional.mse_loss(x_hat, x) + coef * f.sum() / x.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


NO_REUSE = False


def lightning_steps(x, width, n_steps, grad_clip=None):
    """Seconds per step of saeexp's LightningModule in a real Trainer (median over steps after the first)."""
    sae = ReLUSAE(x.shape[1], width)
    module = SAEModule(sae, [L1(5e-3)], lambda params: torch.optim.Adam(params, lr=4e-4, fused=True),
                       total_steps=10**6, log_every=50, reuse_memory=not NO_REUSE, grad_clip=grad_clip)
    # total_steps only shapes the LR schedule and the last-step log: as inside a long run, only step 0
    # logs (and it is not timed)
    clock = _StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=n_steps, logger=_NullLogger(),
                        callbacks=[clock], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        log_every_n_steps=1)
    trainer.fit(module, datamodule=ActivationDataModule(_Fixed(x), x.shape[0], 0))
    clock.starts.append(time.perf_counter())
    # the time from one batch start to the next covers everything Lightning does around the step
    return [b - a for a, b in zip(clock.starts[1:], clock.starts[2:])]


def time_steps(fn, x, n):
    fn(x)  # warm-up (page faults, allocator)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--widths", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-reuse-memory", action="store_true", help="leave glibc's mmap/trim defaults alone")
    args = ap.parse_args()
    global NO_REUSE
    NO_REUSE = args.no_reuse_memory
    if not args.no_reuse_memory:
        # what saeexp's trainer does at fit start (train.reuse_memory); set here first so all three
        # implementations run under the same allocator settings
        from saeexp.train.memory import reuse_freed_memory

        print(f"reuse freed memory (glibc mallopt): {reuse_freed_memory()}")
    widths = args.widths or ([4096] if args.quick else [4096, 16384])
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_in {args.d_in}, batch {args.batch}, fp32")
    print(f"{'width':>6} {'impl':>7} {'tok/s':>9} {'/limit':>7} {'/bare':>6}")
    for width in widths:
        repeats = args.repeats or (3 if (args.quick or width > 8192) else 5)
        steps = 3 if width > 8192 else 6
        limit, bare = make_limit(args.batch, args.d_in, width), bare_loop(x, width)
        t = {"limit": [], "bare": [], "saeexp": [], "+clip": []}
        for _ in range(repeats):  # interleaved
            t["limit"].append(statistics.median(time_steps(limit, x, steps)))
            t["bare"].append(statistics.median(time_steps(bare, x, steps)))
            t["saeexp"].append(statistics.median(lightning_steps(x, width, steps + 2)))
            t["+clip"].append(statistics.median(lightning_steps(x, width, steps + 2, grad_clip=1.0)))
        med = {k: statistics.median(v) for k, v in t.items()}
        for k in ("limit", "bare", "saeexp", "+clip"):
            print(f"{width:>6} {k:>7} {args.batch / med[k]:>9,.0f} {med['limit'] / med[k]:>7.3f} "
                  f"{med['bare'] / med[k]:>6.3f}")
        print(f"{width:>6}  saeexp is {100 * (med['saeexp'] / med['bare'] - 1):+.1f}% per step vs bare; "
              f"target: >= 0.9 of limit, <= +3% vs bare; gradient clipping costs "
              f"{100 * (med['+clip'] / med['saeexp'] - 1):+.1f}% of saeexp's step")


if __name__ == "__main__":
    main()
