"""The prepared GPU check (issue 29): one command, no network, one table, under 8 minutes on one H100.

    python bench/gpu_check.py            # on a GPU: d_in 2304, widths 16384 and 65536, fp32 and bf16
    python bench/gpu_check.py --smoke    # the same code at tiny sizes on the CPU (tests/test_gpu_check.py)

Per variant, width and precision: the training step's ms and tokens/s (saeexp.train.step.manual_step, what the
trainer runs per batch, as bench/speed/bench_variants.py times it), the fraction of the device's bf16 dense-matmul
peak the step reaches (its six standard products, 12 * B * d_in * width FLOPs, over the measured rate of one
large bf16 `torch.mm`; the same peak for fp32 rows, so fp32's fraction says how far TF32/fp32 falls behind) and
the step's peak GPU memory. SAELens' step beside it (fp32, relu/jumprelu/topk) where its venv already exists
(scripts/saelens-venv.sh builds it where there is network; the check never builds it: a lent GPU machine has no
network); skipped with a line saying so otherwise. Then the demo end to end (`saeexp experiment=demo
trainer=gpu`, where SmolLM2 and the corpus are cached; a synthetic run of the same shape otherwise) with its
wall time and metrics. Exit status 1 if any step or run fails or gives non-finite numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "speed"))
SAELENS = ("relu", "jumprelu", "topk")
SAELENS_VERSION = os.environ.get("SAELENS_VERSION", "6.54.12")  # scripts/saelens-venv.sh's default


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_peak(device: str, n: int, repeats: int = 5) -> float:
    """FLOP/s of one n x n x n bf16 `torch.mm`, the best of `repeats` (the dense-matmul peak the step is set
    against)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b, out = torch.randn_like(a), torch.empty_like(a)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def time_step(name: str, d_in: int, width: int, batch: int, k: int, precision: str, device: str,
              repeats: int) -> dict:
    """Median seconds of the variant's training step, and its peak memory (GPU only)."""
    from bench_variants import make, make_step

    sae, penalties = make(name, d_in, width, k, dead_frac=0.1)
    sae.to(device)
    sae.dead_F = sae.dead_F.to(device)
    step = make_step(sae, penalties)
    x_BD = torch.randn(batch, d_in, device=device, generator=torch.Generator(device).manual_seed(2))
    # bf16: autocast around the step, as Lightning's bf16-mixed does (weights and Adam state stay fp32)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16" else \
        (lambda: torch.autocast(device, enabled=False))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for r in range(1 + repeats):  # the first round warms up (allocations, kernels)
        sync(device)
        t0 = time.perf_counter()
        with ctx():
            step(x_BD)
        sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    finite = all(torch.isfinite(p).all() for p in sae.parameters())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del sae, step
    return {"s": statistics.median(times), "peak_bytes": peak, "finite": bool(finite)}


def saelens_python() -> str | None:
    """SAELens' venv python if scripts/saelens-venv.sh built it already (never built here: no network)."""
    cache = Path(os.environ.get("SAEEXP_CACHE") or Path.home() / ".cache" / "saeexp")
    py = cache / f"saelens-{SAELENS_VERSION}" / "bin" / "python"
    return str(py) if py.exists() else None


def saelens_steps(py: str, a, device: str) -> dict:
    """{variant: {width: median seconds}} of SAELens' step (fp32), or {} with a printed reason on failure."""
    cmd = [py, str(HERE / "speed" / "saelens_step.py"), "--widths", *map(str, a.widths), "--variants", *SAELENS,
           "--d-in", str(a.d_in), "--batch", str(a.batch), "--k", str(a.k), "--repeats", str(a.repeats),
           "--device", device]
    done = subprocess.run(cmd, text=True, capture_output=True, timeout=a.saelens_timeout)
    if done.returncode:
        print(f"SAELens' step failed (left out): {done.stderr.strip().splitlines()[-1:]}")
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo(a, device: str) -> dict:
    """The demo end to end through the `saeexp` command: wall seconds and its metrics."""
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "SAEEXP_RUNS": f"{work}/runs", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        trainer = "trainer=gpu" if device == "cuda" else "trainer=cpu"
        args = a.demo_args.split() if a.demo_args else ["experiment=demo"]
        cmd = [sys.executable, "-c", "import sys; from saeexp.cli.train import main; sys.argv[0] = 'saeexp'; main()",
               *args, trainer, "name=gpu_check"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=a.demo_timeout)
        wall = time.perf_counter() - t0
        if done.returncode:
            return {"ok": False, "wall_s": wall, "why": done.stderr.strip()[-1500:]}
        (m,) = [json.loads(p.read_text()) for p in Path(work, "runs", "gpu_check").glob("*/metrics.json")]
    ok = all(math.isfinite(m[k]) for k in ("l0", "fvu"))
    return {"ok": ok, "wall_s": wall, "l0": m["l0"], "fvu": m["fvu"], "ce_recovered": m.get("ce_loss_recovered")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the code path, not the figures")
    p.add_argument("--variants", nargs="+", default=None, help="default: every model config")
    p.add_argument("--no-saelens", action="store_true")
    p.add_argument("--no-demo", action="store_true")
    a = p.parse_args(argv)
    from bench_variants import model_configs

    a.variants = a.variants or model_configs()
    if a.smoke:
        device = "cpu"
        a.d_in, a.widths, a.batch, a.k, a.repeats, a.peak_n = 32, [64, 128], 64, 4, 2, 256
        a.demo_args = ("model=relu data.d_in=16 model.d_sae=64 train.tokens=2048 train.batch_size=256 "
                       "data.heldout_tokens=256 train.init_sample_tokens=256")
        a.demo_timeout, a.saelens_timeout = 120, 120
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("gpu_check: error: torch sees no CUDA device (--smoke runs it on the CPU at tiny sizes)",
                  file=sys.stderr)
            return 2
        device = "cuda"
        # d_in 2304: Gemma-2-2B's residual stream; 16k and 65k latents: the common Gemma Scope widths
        a.d_in, a.widths, a.batch, a.k, a.repeats, a.peak_n = 2304, [16384, 65536], 4096, 64, 5, 8192
        a.demo_args, a.demo_timeout, a.saelens_timeout = None, 240, 120
        print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)

    peak = bf16_peak(device, a.peak_n)
    print(f"bf16 dense-matmul peak ({a.peak_n}^3 torch.mm): {peak / 1e12:.2f} TFLOP/s; d_in {a.d_in}, "
          f"batch {a.batch}, k {a.k}")
    py = None if a.no_saelens else saelens_python()
    theirs = saelens_steps(py, a, device) if py else {}
    if py is None and not a.no_saelens:
        print(f"SAELens: skipped (no venv saelens-{SAELENS_VERSION}; scripts/saelens-venv.sh builds it where "
              "there is network)")
    failed = False
    print(f"{'variant':<10} {'width':>6} {'prec':>5} {'ms/step':>9} {'tokens/s':>10} {'peak%':>6} "
          f"{'GPU MiB':>8} {'SAELens tok/s':>14}")
    for w in a.widths:
        for prec in ("fp32", "bf16"):
            for v in a.variants:
                try:
                    r = time_step(v, a.d_in, w, a.batch, a.k, prec, device, a.repeats)
                except Exception as e:  # one variant's failure is a row, not the end of the check
                    print(f"{v:<10} {w:>6} {prec:>5} FAILED {type(e).__name__}: {e}"[:200])
                    failed = True
                    continue
                failed |= not r["finite"]
                frac = 12 * a.batch * a.d_in * w / r["s"] / peak
                mem = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "-"
                lens = theirs.get(v, {}).get(str(w)) if prec == "fp32" else None
                lens_s = f"{a.batch / lens:.0f}" if lens else "-"
                flag = "" if r["finite"] else "  NOT FINITE"
                print(f"{v:<10} {w:>6} {prec:>5} {r['s'] * 1e3:>9.2f} {a.batch / r['s']:>10.0f} {frac:>6.1%} "
                      f"{mem:>8} {lens_s:>14}{flag}", flush=True)
    if not a.no_demo:
        d = demo(a, device)
        if not d["ok"] and not a.smoke:  # SmolLM2 or the corpus not cached on this machine (no network)
            print(f"demo: experiment=demo failed ({d.get('why', '')[-300:]}); the synthetic run of its shape:")
            a.demo_args = "model=relu data.d_in=576 model.d_sae=4608 train.tokens=1000000 train.batch_size=1024"
            d = demo(a, device)
        if d["ok"]:
            print(f"demo: {d['wall_s']:.0f} s end to end, L0 {d['l0']:.2f}, FVU {d['fvu']:.4f}, CE recovered "
                  f"{d['ce_recovered']}")
        else:
            print(f"demo: FAILED after {d['wall_s']:.0f} s: {d.get('why', 'non-finite metrics')}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
