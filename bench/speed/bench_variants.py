"""Step throughput of every SAE variant as a fraction of the standard SAE's six-product limit.

    python bench/speed/bench_variants.py            # d_in 512, batch 4096, widths 4096 and 16384, fp32
    python bench/speed/bench_variants.py --quick    # width 4096 only, fewer repeats
    python bench/speed/bench_variants.py --saelens --variants relu jumprelu topk   # and tokens/s against SAELens

The limit at a width is the time of the standard step's six matrix products (12 * B * d_in * width FLOPs) as
bare `torch.mm` into preallocated buffers. A step is what the trainer does per batch, without Lightning:
forward, every loss term (recon, the model's default penalty, its own auxiliary terms), backward, decoder-norm
handling and a fused Adam step. Implementations are interleaved within each repeat and the median is kept,
so machine load moves all of them together; quote the fractions, not the tokens/s.
`--saelens` also times SAELens' counterparts of relu, jumprelu and topk (bench/speed/saelens_step.py, in SAELens'
venv from scripts/saelens-venv.sh, under the same allocator settings), alternating with saeexp's in rounds,
and prints saeexp's tokens/s over SAELens'.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from saeexp.configtree import CONF_DIR as CONF
from saeexp.losses import MSE
from saeexp.train.step import make_optimizer, manual_step

TARGETS = {"relu": None, "jumprelu": 0.8, "scsae": 0.8, "topk": 0.8, "batchtopk": 0.7, "gated": 0.6}


def model_configs(config_dir: str | None = None) -> list[str]:
    """Every model config: the package's conf/model/ and, with --config-dir, the user's (new variants)."""
    dirs = [CONF] + ([Path(config_dir)] if config_dir else [])
    return sorted({p.stem for d in dirs for p in (d / "model").glob("*.yaml")})


def make(name: str, d_in: int, width: int, k: int, dead_frac: float, config_dir: str | None = None):
    """(sae, penalties) as `saeexp model=<name>` builds them (its default penalty), from the model config alone;
    `dead_F` marks the latents kept dead, so whatever a variant does with dead latents (AuxK) has work."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import get_class

    from saeexp.build.plan import plan_run

    overrides = [f"model={name}", f"data.d_in={d_in}", f"model.d_sae={width}"]
    if config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides)
        if get_class(cfg.model._target_).sparsity_control == "k":
            cfg = compose("config", overrides + [f"model.k={k}"])
    plan = plan_run(cfg)
    sae, penalties = plan.sae, plan.penalties
    sae.dead_F = torch.rand(width, generator=torch.Generator().manual_seed(1)) < dead_frac
    return sae, penalties


def make_step(sae, penalties):
    """One training step closure: saeexp.train.step.manual_step, what SAEModule runs per batch minus logging."""
    terms = [MSE(1.0), *penalties]
    opt = make_optimizer(functools.partial(torch.optim.Adam, lr=4e-5, fused=True), sae)  # as SAEModule
    dead_T = sae.dead_F.long() * 2**62  # "not fired for ever" on the dead latents, 0 elsewhere

    def step(x_BD):
        sae.tokens_since_fired.copy_(dead_T)  # the same dead latents every step, so AuxK always has work
        manual_step(sae, terms, opt, x_BD)  # the trainer's step, firing bookkeeping included

    return step


def make_limit(B: int, d_in: int, width: int, products: int = 6):
    """The six products of a standard step (five: without the input's gradient, which training never needs),
    bare `torch.mm` into preallocated buffers."""
    g = torch.Generator().manual_seed(0)
    x, W_enc, W_dec = torch.randn(B, d_in, generator=g), torch.randn(d_in, width, generator=g), \
        torch.randn(width, d_in, generator=g)
    z, xh, gz, gWd, gWe, gx = (torch.empty(B, width), torch.empty(B, d_in), torch.empty(B, width),
                               torch.empty(width, d_in), torch.empty(d_in, width), torch.empty(B, d_in))

    def limit(_x):
        torch.mm(x, W_enc, out=z)           # encoder
        torch.mm(z, W_dec, out=xh)          # decoder
        torch.mm(xh, W_dec.t(), out=gz)     # grad of activations
        torch.mm(z.t(), xh, out=gWd)        # grad of W_dec
        torch.mm(x.t(), gz, out=gWe)        # grad of W_enc
        if products == 6:
            torch.mm(gz, W_enc.t(), out=gx)  # grad of the input

    return limit


def bench_width(names, B, d_in, width, k, repeats, warmup, dead_frac, config_dir=None):
    x_BD = torch.randn(B, d_in, generator=torch.Generator().manual_seed(2))  # E||x|| ~ sqrt(d_in), as trained
    fns = {"limit": make_limit(B, d_in, width)}
    for n in names:
        fns[n] = make_step(*make(n, d_in, width, k, dead_frac, config_dir))
    times = {n: [] for n in fns}
    for r in range(warmup + repeats):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn(x_BD)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(ts) for n, ts in times.items()}


def saelens_ratios(a, width: int, reps: int, res: dict) -> dict:
    """Alternate saeexp's and SAELens' steps in rounds; print the medians' tokens/s ratio per variant."""
    peers = [v for v in ("relu", "jumprelu", "topk") if v in a.variants]
    here = Path(__file__).resolve().parent
    py = subprocess.run([str(here.parents[1] / "scripts" / "saelens-venv.sh")], check=True, text=True,
                        stdout=subprocess.PIPE).stdout.strip()
    ours, theirs = [res], []
    for r in range(a.rounds):
        if r:
            ours.append(bench_width(a.variants, a.batch, a.d_in, width, a.k, reps, 1, a.dead_frac))
        cmd = [py, str(here / "saelens_step.py"), "--widths", str(width), "--variants", *peers, "--d-in",
               str(a.d_in), "--batch", str(a.batch), "--k", str(a.k), "--dead-frac", str(a.dead_frac),
               "--repeats", str(reps)] + (["--no-reuse-memory"] if a.no_reuse_memory else [])
        done = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if done.returncode:
            raise SystemExit(f"bench_variants: SAELens' step failed:\n{done.stderr[-2000:]}")
        theirs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    res = {n: statistics.median(o[n] for o in ours) for n in res}
    for n in peers:
        t = statistics.median(th[n][str(width)] for th in theirs)
        print(f"  SAELens {n:<8} {width:>6} {t * 1e3:>9.1f} {a.batch / t:>9.0f} {res['limit'] / t:>6.2f}   "
              f"saeexp/SAELens tokens/s: {t / res[n]:.2f}x", flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--variants", nargs="+", default=None, help="default: every model config found")
    p.add_argument("--config-dir", default=None, help="a config dir with more model configs (as saeexp's)")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dead-frac", type=float, default=0.1, help="fraction of latents kept dead (AuxK, pre-act work)")
    p.add_argument("--repeats", type=int, default=None, help="default: 7 at width <= 4096, else 3")
    p.add_argument("--quick", action="store_true", help="width 4096 only, 3 repeats")
    p.add_argument("--no-reuse-memory", action="store_true", help="leave glibc's mmap/trim defaults alone")
    p.add_argument("--saelens", action="store_true", help="also SAELens' relu/jumprelu/topk step; ratio of tokens/s")
    p.add_argument("--rounds", type=int, default=2, help="with --saelens: saeexp and SAELens alternate this often")
    a = p.parse_args(argv)
    found = model_configs(a.config_dir)
    a.variants = a.variants or found
    unknown = [v for v in a.variants if v not in found]
    if unknown:
        p.error(f"--variants: no model config {unknown}; expected some of {found}")
    if not a.no_reuse_memory:  # as saeexp's trainer does at fit start (train.reuse_memory)
        from saeexp.train.memory import reuse_freed_memory

        print(f"reuse freed memory (glibc mallopt): {reuse_freed_memory()}")
    widths = [4096] if a.quick else a.widths
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_in {a.d_in}, batch {a.batch}, "
          f"fp32; topk/batchtopk k={a.k} with AuxK on {a.dead_frac:.0%} dead latents")
    print(f"{'variant':<10} {'width':>6} {'ms/step':>9} {'tokens/s':>9} {'frac':>6} {'target':>7}")
    for w in widths:
        reps = a.repeats or (3 if a.quick or w > 4096 else 7)
        res = bench_width(a.variants, a.batch, a.d_in, w, a.k, reps, 1, a.dead_frac, a.config_dir)
        if a.saelens:
            res = saelens_ratios(a, w, reps, res)
        for n, t in res.items():
            frac = res["limit"] / t
            tgt = TARGETS.get(n)
            mark = "" if tgt is None else f">={tgt:.1f}" + (" ok" if frac >= tgt else " LOW")
            print(f"{n:<10} {w:>6} {t * 1e3:>9.1f} {a.batch / t:>9.0f} {frac:>6.2f} {mark:>7}", flush=True)


if __name__ == "__main__":
    main()
