"""Packed sweeps against separate runs (issue 28): N SAEs on SmolLM2-135M layer 3, streamed and cached.

    python bench/speed/bench_pack.py                  # N = 1, 4, 16; 16,384 tokens each; stream and cache
    python bench/speed/bench_pack.py --quick          # N = 1, 2 at 4,096 tokens: a smoke run
    python bench/speed/bench_pack.py --sizes 4 --tokens 65536 --modes cache
    python bench/speed/bench_pack.py --sizes 16 --modes stream --set trainer=gpu   # on a GPU

The N points cycle through relu, gated and topk at widths 4608 and 9216 (d_in 576; distinct coefficients or k
where a combination repeats), `experiment=demo` otherwise (batch 1024), no CE evaluation and no dashboards.
Each arrangement runs in a fresh process, whose wall time and peak RSS (wait4's ru_maxrss) are printed:
  packed    one process: saeexp.jobs.pack.train_pack over the N plans (what `hydra/launcher=packed` runs);
  separate  one process: saeexp.jobs.train.train for each plan in turn (what `saeexp -m` runs locally).
Streamed, each separate run harvests its own tokens; cached, the entry is built once before both (not timed).
A third process times each SAE's bare step (its steps on one in-memory batch) and one pass of the cached data,
for the cached target. Targets (ratios from this one run): streamed, 16 packed <= 0.5 x 16 separate; cached,
packed training <= 1.1 x (sum of bare steps + one data pass); every packed SAE's weights equal its separate run's.
Results: bench/out/pack-<time>/ (results.json, one log per process). Needs scripts/setup-lm.sh.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import _compose  # the config the CLI would compose, with a run directory  # noqa: E402

BASE = ["experiment=demo", "features.enabled=false", "data.model_eval=false", "data.heldout_tokens=8192",
        "train.init_sample_tokens=8192", "overwrite=true"]
COMBOS = [("relu", 4608), ("gated", 9216), ("topk", 4608), ("relu", 9216), ("gated", 4608), ("topk", 9216)]


def points(n: int) -> list[list[str]]:
    """N distinct points: relu, gated and topk at the two widths, then again with other coefficients or k."""
    out = []
    for i in range(n):
        model, width = COMBOS[i % len(COMBOS)]
        rep = i // len(COMBOS)
        knob = f"model.k={16 * 2 ** rep}" if model == "topk" else f"loss.l1={2e-3 * 2 ** rep:g}"
        out.append([f"model={model}", f"model.d_sae={width}", knob])
    return out


def _timed(owner, name: str, total: list) -> None:
    """Replace `owner.name` by a wrapper that adds its calls' wall time to total[0]."""
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            total[0] += time.perf_counter() - t

    setattr(owner, name, wrapper)


def child(spec: dict) -> None:
    import torch

    from saeexp.build.plan import plan_run
    from saeexp.train import pack

    root, extra = Path(spec["root"]), spec["extra"]
    plans = [plan_run(_compose([*BASE, *extra, *pt], root / f"p{i}")) for i, pt in enumerate(points(spec["n"]))]
    out: dict = {}
    if spec["kind"] == "prepare":  # the cached entry built, the model loaded once (OS caches warm), not timed
        plans[0].source.prepare()
        plans[0].source.sample(1024, seed=0)
    elif spec["kind"] == "bare":  # each SAE's steps on one batch in memory, and one pass of the data, timed apart
        from saeexp.jobs.train import init_from_sample, make_module
        from saeexp.train.step import make_optimizer, manual_step

        p0 = plans[0]
        p0.source.prepare()
        steps = p0.schedule.steps
        t = time.perf_counter()
        it = p0.source.batches(p0.schedule.batch_size, p0.seed, 0)
        for _ in range(steps):
            batch = next(it)
        out["data_pass_s"] = time.perf_counter() - t
        bare = []
        for p in plans:
            scale = init_from_sample(p.init, p.seed, p0.source, p.sae)
            m = make_module(p, scale)
            opt = make_optimizer(m.optimizer_factory, m.sae)
            manual_step(m.sae, m.terms, opt, batch, 0, m.recipe)  # warm-up, not timed
            t = time.perf_counter()
            for s in range(steps):
                manual_step(m.sae, m.terms, opt, batch, s, m.recipe)
            bare.append(time.perf_counter() - t)
        out["bare_s"] = bare
    elif spec["kind"] == "packed":
        from saeexp.jobs.pack import train_pack

        fit_s = [0.0]
        _timed(pack, "fit", fit_s)  # the training loop alone
        res = train_pack(plans)
        out.update(fit_s=fit_s[0], fvu=[r["fvu"] for r in res])
    else:
        from saeexp.jobs import train as single

        fit_s = [0.0]
        _timed(single, "_fit", fit_s)  # each run's Lightning fit alone
        out.update(fvu=[single.train(p)["fvu"] for p in plans], fit_s=fit_s[0])
    out["threads"] = torch.get_num_threads()
    Path(spec["out"]).write_text(json.dumps(out))


def run_child(spec: dict, env: dict, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=f,
                             stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{spec['kind']} {spec['mode']} N={spec['n']} failed; see {log}")
    res = json.loads(Path(spec["out"]).read_text())
    res.update(wall_s=time.perf_counter() - t0, peak_rss_gb=usage.ru_maxrss / 2 ** 20)
    return res


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "sae/sae.safetensors")), load_file(str(b / "sae/sae.safetensors"))
    return set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--modes", default="stream,cache")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the children (0: torch's default)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides for every run, e.g. trainer=gpu")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    if a.quick:
        a.sizes, a.tokens = "1,2", 4096
    sizes, modes = [int(s) for s in a.sizes.split(",")], a.modes.split(",")
    out_dir = ROOT / "bench" / "out" / time.strftime("pack-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    env = {**os.environ, "SAEEXP_RUNS": str(out_dir / "runs"), "MLFLOW_TRACKING_URI": f"sqlite:///{out_dir}/mlflow.db"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    rows, ok = [], True
    print(f"{a.tokens:,} tokens per SAE, batch 1024; out: {out_dir}", flush=True)
    for mode in modes:
        extra = [f"train.tokens={a.tokens}", f"data.harvest_tokens={a.tokens}", *a.set]
        extra += ["data.stream=true"] if mode == "stream" else []
        # both modes: the model loaded once first (its files in the OS cache); cached: the entry built, untimed
        spec = {"kind": "prepare", "mode": mode, "n": 1, "extra": extra, "root": str(out_dir / "prepare"),
                "out": str(out_dir / "prepare.json")}
        print(f"{mode}: prepared in {run_child(spec, env, out_dir / 'prepare.log')['wall_s']:.0f} s", flush=True)
        for n in sizes:
            r = {"mode": mode, "n": n}
            for kind in ("packed", "separate") + (("bare",) if mode == "cache" else ()):
                spec = {"kind": kind, "mode": mode, "n": n, "extra": extra, "root": str(out_dir / f"{mode}-{n}-{kind}"),
                        "out": str(out_dir / f"{mode}-{n}-{kind}.json")}
                r[kind] = run_child(spec, env, out_dir / f"{mode}-{n}-{kind}.log")
            r["equal"] = all(same_weights(out_dir / f"{mode}-{n}-packed" / f"p{i}", out_dir / f"{mode}-{n}-separate" / f"p{i}")
                             for i in range(n))
            pk, sep = r["packed"], r["separate"]
            line = (f"{mode:6s} N={n:2d}  packed {pk['wall_s']:7.1f} s ({pk['wall_s'] / n:6.1f} s/SAE, peak RSS "
                    f"{pk['peak_rss_gb']:5.2f} GB)  separate {sep['wall_s']:7.1f} s ({sep['wall_s'] / n:6.1f} s/SAE, "
                    f"peak RSS {sep['peak_rss_gb']:5.2f} GB)  packed/separate {pk['wall_s'] / sep['wall_s']:.2f}  "
                    f"weights equal: {r['equal']}\n                training loops: packed {pk['fit_s']:.1f} s, separate "
                    f"{sep['fit_s']:.1f} s in all")
            if mode == "cache":
                bare = r["bare"]
                bound = sum(bare["bare_s"]) + bare["data_pass_s"]
                r["fit_over_bound"] = pk["fit_s"] / bound
                line += (f"\n                packed training {pk['fit_s']:.1f} s vs bare steps {sum(bare['bare_s']):.1f} s + "
                         f"data pass {bare['data_pass_s']:.2f} s: ratio {r['fit_over_bound']:.2f} (target <= 1.10)")
                ok &= r["fit_over_bound"] <= 1.10
            if mode == "stream" and n == max(sizes):
                ok &= pk["wall_s"] / sep["wall_s"] <= 0.5
                line += "  (target <= 0.50)"
            ok &= r["equal"]
            print(line, flush=True)
            rows.append(r)
    (out_dir / "results.json").write_text(json.dumps({"tokens": a.tokens, "rows": rows}, indent=1))
    print("targets met" if ok else "targets NOT met", flush=True)


if __name__ == "__main__":
    main()
