"""Cost of data=lm as the token count grows, streamed (data.stream=true) and cached (issue 27).

    python bench/speed/bench_stream.py            # 1M, 4M, 16M tokens, each streamed and cached (hours on 2 cores)
    python bench/speed/bench_stream.py --quick    # 32k, 64k, 128k tokens with 16k-token buffers: a smoke run
    python bench/speed/bench_stream.py --sizes 1000000,4000000 --threads 2

Each configuration is `saeexp experiment=demo data.harvest_tokens=N train.tokens=N features.enabled=false
data.model_eval=false` (SmolLM2-135M layer 3, d_sae 4608, batch 1024; `data.stream=true` for the stream), run in
a fresh process with a fresh activation cache (the dequantised model and the packed corpus are shared), so the
cached runs harvest. Printed per N and mode: wall time per million tokens (the whole process: imports, model,
harvest, training, held-out scoring), peak RSS of that process (wait4's ru_maxrss: what `/usr/bin/time -v` says),
disk used by the activation cache, harvest and train tokens/s. Then the targets, as ratios from this one run:
time per token from the smallest to the largest N <= 1.10 and peak RSS <= 1.10 (both paths), streamed disk 0,
streamed total <= 1.1 x the cached path's (harvest then train, the whole process either way). The cached path's
harvest and train times are timed apart (source.prepare(), then train()); the stream's harvest time is what its
buffer spent in the model, its train time train()'s less the time training waited for the harvest.

The Debian corpus holds about 10.3M training tokens: past that both paths pass over it again (data.epochs);
the cached path then harvests the corpus once and trains more than one pass, the stream harvests every token it
trains on, so at 16M the cached path is charged its harvest per token for the tokens the stream harvested beyond
it. Results go to bench/out/stream-<time>/ (results.json, one log per run). Needs scripts/setup-lm.sh.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
BASE = ["experiment=demo", "features.enabled=false", "data.model_eval=false", "overwrite=true", "name=bench_stream"]
SHARED = ("models", "digests", "datasets")  # what runs may share: the model, weight digests, the packed corpus


def _cache_root() -> Path:
    return Path(os.environ.get("SAEEXP_CACHE", "~/.cache/saeexp")).expanduser()


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# --- the child: one configuration in its own process ---------------------------------------------------------
def _vm(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set, GB."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def _phase_callback(phases: dict):
    """Where the peak is reached: the peak so far at the start and the end of fit (Lightning callback)."""
    from lightning.pytorch.callbacks import Callback

    class Phases(Callback):
        def on_train_start(self, trainer, module):
            phases["fit_start"] = _vm()

        def on_train_end(self, trainer, module):
            phases["fit_end"], phases["rss_fit_end"] = _vm(), _vm("VmRSS")

    return Phases()


def phases_callback():
    """The `_target_` of the phase callback (made by child() before the config is composed)."""
    return PHASES


PHASES = None
def _compose(overrides: list[str], run_dir: Path):
    """The config the CLI would compose (Hydra's runtime fields filled, then resolved)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    import saeexp.build.resolvers  # noqa: F401  (registers the run_name resolver)
    from saeexp.configtree import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.run_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg


def child(spec: dict) -> None:
    from saeexp.build.plan import make, plan_run
    from saeexp.data import lm as lm_data
    from saeexp.jobs.train import train

    made = []  # the sources plan_run() builds: the stream's harvest statistics are read from it afterwards
    init = lm_data.LMSource.__init__

    def recording_init(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    lm_data.LMSource.__init__ = recording_init
    phases = {"start": _vm()}
    global PHASES
    PHASES = _phase_callback(phases)
    cfg = _compose([*spec["overrides"], "+callbacks.phases._target_=__main__.phases_callback"], Path(spec["run_dir"]))
    out = {"harvest_s": 0.0, "harvested": 0, "peak_gb": phases}
    if not cfg.data.stream:  # the harvest, timed alone; train() then finds the cache
        src = make(cfg.data)
        t = time.perf_counter()
        src.prepare()
        out["harvest_s"] = time.perf_counter() - t
        out["harvested"] = src.describe()["entry_tokens"]
        phases["harvested"] = _vm()
    t = time.perf_counter()
    result = train(plan_run(cfg))
    out["train_s"] = time.perf_counter() - t
    if cfg.data.stream:
        stats = made[-1].feed().buffer.stats
        out.update(harvest_s=stats["harvest_s"], harvested=stats["harvest_rows"])
        out["train_s"] -= stats["wait_s"]
    phases["end"] = _vm()
    out.update(fvu=result.get("fvu"), l0=result.get("l0"), tokens=result.get("tokens"))
    Path(spec["out"]).write_text(json.dumps(out))


# --- the parent --------------------------------------------------------------------------------------------
def corpus_train_tokens(cache: Path) -> int:
    """Training tokens one pass over the default corpus gives (held-out windows excluded), counted once."""
    memo = cache / "bench_stream_corpus_tokens.json"
    if memo.exists():
        return json.loads(memo.read_text())["tokens"]
    from saeexp.data.lm import LMSource

    src = LMSource(cache_dir=str(cache))
    ws = src.window_stream()
    ws.take(src.n_heldout_windows)
    n = 0
    while len(w := ws.take(4096)):
        n += len(w)
    memo.write_text(json.dumps({"tokens": n * src.per_window}))
    return n * src.per_window


def run_one(mode: str, n: int, out_dir: Path, extra: list[str], corpus_tokens: int | None, env: dict) -> dict:
    cache = out_dir / f"cache-{mode}-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    for name in SHARED:
        (_cache_root() / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(_cache_root() / name)
    overrides = [*BASE, f"train.tokens={n}", *extra]
    harvest = n if corpus_tokens is None else min(n, corpus_tokens)
    epochs = max(1, math.ceil(n / harvest))
    if mode == "stream":
        overrides.append("data.stream=true")
        if corpus_tokens is not None:  # the buffer reads 4 fills past the last token trained on
            epochs = max(1, math.ceil((n + 131072) / corpus_tokens))
    overrides += [f"data.harvest_tokens={harvest}", f"data.epochs={epochs}"]
    spec = {"overrides": overrides, "run_dir": str(out_dir / "runs" / f"{mode}-{n}"),
            "out": str(out_dir / f"{mode}-{n}.json")}
    log = open(out_dir / f"{mode}-{n}.log", "w")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT,
                         env={**env, "SAEEXP_CACHE": str(cache), "SAEEXP_RUNS": str(out_dir / "runs"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{out_dir}/mlflow.db"})
    _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage: its peak RSS, nobody else's
    wall = time.perf_counter() - t0
    p.returncode = status = os.waitstatus_to_exitcode(status)
    log.close()
    if status != 0:
        raise SystemExit(f"{mode} N={n} failed (status {status}); see {out_dir / f'{mode}-{n}.log'}")
    res = json.loads(Path(spec["out"]).read_text())
    disk = _du(cache / "activations")
    shutil.rmtree(cache / "activations", ignore_errors=True)  # 16M fp32 tokens are 24 GB: measured, then freed
    res.update(mode=mode, n=n, wall_s=wall, peak_rss_gb=usage.ru_maxrss / 2 ** 20, disk_gb=disk / 1e9,
               s_per_mtok=wall / n * 1e6, harvest_tok_s=res["harvested"] / max(res["harvest_s"], 1e-9),
               train_tok_s=n / max(res["train_s"], 1e-9), overrides=overrides)
    print(f"{mode:6s} {n / 1e6:7.3f}M  wall {wall:8.1f} s  {res['s_per_mtok']:8.1f} s/Mtok  peak RSS "
          f"{res['peak_rss_gb']:5.2f} GB  disk {res['disk_gb']:6.2f} GB  harvest {res['harvest_tok_s']:8,.0f} tok/s "
          f"({res['harvested']:,})  train {res['train_tok_s']:8,.0f} tok/s  FVU {res['fvu']:.4f}\n"
          f"         peak RSS so far (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in res["peak_gb"].items()), flush=True)
    return res


def report(rows: list[dict]) -> list[str]:
    by = {(r["mode"], r["n"]): r for r in rows}
    sizes = sorted({r["n"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    lines, ok = [], True

    def check(name: str, value: float, limit: float, note: str = "") -> None:
        nonlocal ok
        good = value <= limit
        ok &= good
        lines.append(f"  {name}: {value:.3f} (target <= {limit:.2f}) {'PASS' if good else 'FAIL'}{note}")

    lines.append(f"targets ({lo:,} -> {hi:,} tokens):")
    for mode in ("stream", "cache"):
        if (mode, lo) in by and (mode, hi) in by:
            a, b = by[(mode, lo)], by[(mode, hi)]
            check(f"{mode} time per token, {hi / lo:g}x tokens", b["s_per_mtok"] / a["s_per_mtok"], 1.10,
                  " (fixed start-up costs amortise: below 1 is expected at small N)")
            check(f"{mode} peak RSS, {hi / lo:g}x tokens", b["peak_rss_gb"] / a["peak_rss_gb"], 1.10)
    disk = max((by[("stream", n)]["disk_gb"] for n in sizes if ("stream", n) in by), default=0.0)
    check("streamed disk (GB, every N)", disk, 0.0)
    for n in sizes:
        if ("stream", n) in by and ("cache", n) in by:
            s, c = by[("stream", n)], by[("cache", n)]
            # both whole processes (imports, model, held-out set alike); the cached one charged its harvest per
            # token for any token the stream harvested beyond it (past the corpus, or the stream's last fill)
            extra = c["harvest_s"] / max(c["harvested"], 1) * (s["harvested"] - c["harvested"])
            check(f"stream total / cached (harvest then train) at {n:,}", s["wall_s"] / (c["wall_s"] + extra), 1.10,
                  f"  [stream {s['wall_s']:.0f} s; cached {c['wall_s']:.0f} s: harvest {c['harvest_s']:.0f} s + train "
                  f"{c['train_s']:.0f} s{f' + {extra:.0f} s' if abs(extra) >= 1 else ''}]")
    lines.append("all targets met" if ok else "some targets missed")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated token counts (default 1M,4M,16M)")
    ap.add_argument("--quick", action="store_true", help="32k, 64k, 128k tokens, 16k-token buffers")
    ap.add_argument("--modes", default="stream,cache")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: unset)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [32_768, 65_536, 131_072] if args.quick else [1_000_000, 4_000_000, 16_000_000])
    # --quick: buffers of 16k tokens on both paths (the stream's in fills of 4k, the cache's reader in chunks of
    # 2k: at the default 131k a run smaller than the buffer holds less and its memory grows with N up to it) and
    # 4k held-out tokens, so the smallest run is not all start-up
    extra = ["data.stream_buffer_tokens=16384", "+data.chunk_tokens=2048", "+data.buffer_chunks=8",
             "data.heldout_tokens=4096", "train.init_sample_tokens=4096"] if args.quick else []
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out_dir = ROOT / "bench" / "out" / time.strftime("stream-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    corpus = corpus_train_tokens(_cache_root()) if max(sizes) > 8_000_000 else None
    if corpus:
        print(f"the corpus gives {corpus:,} training tokens per pass; past that, runs pass over it again")
    rows = [run_one(mode, n, out_dir, extra, corpus, env) for n in sizes for mode in args.modes.split(",")]
    lines = report(rows)
    print("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, "report": lines}, indent=1))
    print(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
