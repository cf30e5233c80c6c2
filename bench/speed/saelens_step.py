"""SAELens' training step, timed like bench/speed/bench_variants.py times saeexp's (run with SAELens' venv python).

    PY=$(scripts/saelens-venv.sh); $PY bench/speed/saelens_step.py --widths 4096 --variants relu topk

One step is `SAETrainer.step(batch)`: SAELens' forward and losses, its dead-latent bookkeeping, backward,
gradient clipping, Adam and the schedulers (what `fit()` does per batch, minus logging). The variants are
SAELens' counterparts of saeexp's defaults: relu -> standard, jumprelu -> jumprelu, topk -> topk (AuxK on
the same fraction of latents held dead). glibc is told to keep freed memory, as saeexp's trainer does, so
both run under the same allocator settings. Prints one JSON line: {variant: {width: median seconds}}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # saeexp.train.memory: pure ctypes

COUNTERPART = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}


def make_trainer(variant: str, d_in: int, width: int, k: int, batch: int, device: str = "cpu"):
    import sae_lens as sl
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if variant == "relu":
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=d_in, d_sae=width, l1_coefficient=5.0,
                                                                device=device))
    elif variant == "jumprelu":
        sae = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=width, l0_coefficient=5.0,
                                                               device=device))
    else:
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k, device=device))
    cfg = SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=batch, lr=4e-5, lr_end=4e-5,
                           logger=LoggingConfig(log_to_wandb=False), device=device)
    return SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[4096])
    p.add_argument("--variants", nargs="+", default=list(COUNTERPART), choices=list(COUNTERPART))
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dead-frac", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-reuse-memory", action="store_true")
    p.add_argument("--device", default="cpu", help="cuda: bench/gpu_check.py's side-by-side")
    a = p.parse_args(argv)
    if not a.no_reuse_memory:
        from saeexp.train.memory import reuse_freed_memory

        reuse_freed_memory()
    x_BD = torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(2)).to(a.device)  # as bench_variants
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)  # GPU work is asynchronous
    out = {}
    for w in a.widths:
        trainers = {v: make_trainer(v, a.d_in, w, a.k, a.batch, a.device) for v in a.variants}
        dead_F = (torch.rand(w, generator=torch.Generator().manual_seed(1)) < a.dead_frac).to(a.device)
        times = {v: [] for v in trainers}
        for r in range(1 + a.repeats):  # interleaved; the first round warms up
            for v, tr in trainers.items():
                tr.n_forward_passes_since_fired.copy_(dead_F.float() * 10**9)  # these latents count as dead
                sync()
                t0 = time.perf_counter()
                tr.step(x_BD)
                sync()
                tr.n_training_steps += 1
                if r:
                    times[v].append(time.perf_counter() - t0)
        for v, ts in times.items():
            out.setdefault(v, {})[str(w)] = statistics.median(ts)
        del trainers
    print(json.dumps(out))


if __name__ == "__main__":
    main()
