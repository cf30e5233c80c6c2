"""Quality benchmark (issue 8): every saeexp variant against SAELens' trainer on ground-truth synthetic data.

    python bench/quality/bench_quality.py            # set 1, every variant, its settings, 3 seeds, both libraries
    python bench/quality/bench_quality.py --seeds 1 --tokens 400000 --variants topk,jumprelu   # a quick look
    python bench/quality/bench_quality.py --set 2 --device cuda   # set 2 in full (on CPU: one setting per variant)
    python bench/quality/bench_quality.py --variants relu+l1 --settings 1e-2,3e-2 --saeexp-only

saeexp trains through its CLI (`saeexp data=file data.path=...`, a subprocess importing this checkout);
SAELens through its own `SAETrainer` in its venv (bench/quality/saelens_train.py). Same file, same batches in the same
order, same batch size, lr schedule and token budget. Both SAEs are scored by saeexp's metric code on the
held-out rows (L0, FVU, L2 ratio, dead fraction, recovered@0.9, MCC); set 1 also by SAELens' own
`sae_lens.synthetic` evaluation (bench/quality/saelens_eval.py). A finished run (its score.json) is never redone:
a rerun only fills gaps, so delete a run's folder (or the variant's) to train it again after a fix.
Results: OUT/set<N>-<tokens>/results.json, the comparison table on stdout, one PNG per variant + overlay.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE)]

import quality_report  # noqa: E402
import quality_sets  # noqa: E402
from peer_sae import load_peer  # noqa: E402

from saeexp import metrics as M  # noqa: E402

# the console script users run (with PYTHONPATH, it imports this checkout), or the same entry point
SAEEXP = [shutil.which("saeexp")] if shutil.which("saeexp") else [sys.executable, "-c", "from saeexp.cli.train import main; main()"]
# variant -> saeexp overrides, the swept key and its default settings (L0 roughly 5-60 on set 1), and what it
# is compared with: a SAELens architecture (`peer`) or another saeexp variant (`base`)
L1_GRID = [1e-2, 3e-2, 1e-1, 3e-1]  # factor 3 apart: after a training fix the L0 response moves, the grid still spans
VARIANTS = {
    "relu+l1": dict(args=["model=relu", "loss=l1"], key="loss.l1", settings=L1_GRID, peer="standard"),
    "relu+l1_decoder_norm": dict(args=["model=relu", "loss=l1_decoder_norm"], key="loss.l1", settings=L1_GRID,
                                 peer="standard"),
    "gated": dict(args=["model=gated"], key="loss.l1", settings=L1_GRID, peer="gated"),
    "jumprelu": dict(args=["model=jumprelu"], key="loss.l0", settings=[3e-3, 1e-2, 3e-2, 1e-1], peer="jumprelu"),
    "topk": dict(args=["model=topk"], key="model.k", settings=[5, 10, 20, 40], peer="topk"),
    "batchtopk": dict(args=["model=batchtopk"], key="model.k", settings=[5, 10, 20, 40], peer="batchtopk",
                      base="topk"),
    "scsae": dict(args=["model=scsae"], key="loss.l1", settings=[3e-3, 1e-2, 3e-2, 1e-1], base="relu+l1"),
    "relu+ortho": dict(args=["model=relu", "loss=l1", "ortho=nearest"], key="loss.l1", settings=L1_GRID,
                       base="relu+l1"),
}
# SAELens' coefficients on set 1: its MSE sums over d_in where saeexp's averages, so its coefficients are ~d_in
# (64) times ours (jumprelu: 0.3-3 spans L0 31-3 on set 1, bench/results/set1-2026-12-02/). Other sets move
# both grids (`grid`): at E||x|| = sqrt(d_in) a feature's coefficient is ~sqrt(d_in / L0), so removing it costs
# ~1/L0 of saeexp's MSE while its L1 costs lambda * sqrt(d_in / L0): the L1 coefficient that keeps an L0 scales
# as 1/sqrt(d_in) (saeexp) and sqrt(d_in) (SAELens); an L0 coefficient as 1 (saeexp) and d_in (SAELens)
PEERS = {"standard": [0.5, 1.5, 5.0, 15.0], "gated": [0.5, 1.5, 5.0, 15.0], "jumprelu": [0.3, 0.7, 1.0, 3.0],
         "topk": [5, 10, 20, 40], "batchtopk": [5, 10, 20, 40]}


def _code_version() -> str:
    """saeexp's code as trained: the commit, and whether saeexp/ had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "saeexp") else "")


CODE = _code_version()


def fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() and v >= 1 else f"{v:g}"


def saeexp_run(spec, a, variant, setting, seed, folder: Path) -> float:
    v, t = VARIANTS[variant], a.tokens
    cmd = [*SAEEXP, *v["args"], f"{v['key']}={fmt(setting)}",
           "data=file", f"data.path={spec['path']}", f"data.d_in={spec['data']['d_in']}",
           f"data.heldout_tokens={spec['heldout']}", f"model.d_sae={spec['width']}", f"train.tokens={t}",
           f"train.batch_size={quality_sets.RECIPE['batch']}", f"optimizer.lr={quality_sets.RECIPE['lr']}",
           f"train.lr_decay_tokens={int(t * quality_sets.RECIPE['decay_frac'])}",
           f"train.sparsity_warmup_tokens={int(t * quality_sets.RECIPE['sparsity_warmup_frac'])}",
           f"seed={seed}", f"name=bench_quality_set{spec['set']}", f"hydra.run.dir={folder}",
           f"paths.runs_root={folder.parents[2]}", *a.override]
    if a.device == "cuda":
        cmd += ["trainer=gpu", "trainer.precision=32-true"]
    if a.redo:
        cmd += ["overwrite=true"]
        for f in ("score.json", "saelens_eval.json"):
            (folder / f).unlink(missing_ok=True)
    return _run(cmd, folder)


def peer_run(spec, a, arch, setting, seed, folder: Path) -> float:
    cmd = [a.peer_python, str(HERE / "saelens_train.py"), "--data", spec["path"], "--d-in", str(spec["data"]["d_in"]),
           "--heldout", str(spec["heldout"]), "--width", str(spec["width"]), "--arch", arch, "--coef", str(setting),
           "--seed", str(seed), "--tokens", str(a.tokens), "--device", a.device, "--out", str(folder)]
    return _run(cmd, folder)


def _run(cmd, folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = (folder / "train.log").read_text().strip().splitlines()[-3:]
        print(f"  FAILED (exit {rc}): {folder}\n    " + "\n    ".join(tail))
    return time.perf_counter() - t0


@torch.no_grad()
def score(sae, x, codes, truth) -> dict:
    """saeexp's metrics of an SAE taking raw inputs, on the held-out rows."""
    sae.eval()
    ev = M.evaluate(sae, x)
    acts = torch.cat([sae(x[i:i + 4096]).acts_BF.float() for i in range(0, len(x), 4096)])
    rec = M.ground_truth_recovery(truth, sae.W_dec.detach())
    return {"l0": ev["l0"], "fvu": ev["fvu"], "l2_ratio": ev["l2_ratio"], "dead_frac": ev["dead"] / sae.d_sae,
            "recovered": rec["gt_recovered@0.9"], "gt_mmcs": rec["gt_mmcs"], "mcc": M.feature_mcc(codes, acts)}


def grid(settings: list, key: str, d_in: int) -> list:
    """A grid of set 1 moved to a set of width d_in: k as is, coefficients by the rule above.
    `key`: saeexp's swept key, or SAELens' architecture."""
    r = d_in / quality_sets.SETS[1]["data"]["d_in"]  # the grids above are set 1's
    factor = {"loss.l1": r ** -0.5, "standard": r ** 0.5, "gated": r ** 0.5, "jumprelu": r}.get(key, 1.0)
    return settings if factor == 1.0 else [float(f"{s * factor:.3g}") for s in settings]


def jobs(a):
    """(library, name, setting, seed, folder) for everything asked for."""
    for variant in a.variants:
        v = VARIANTS[variant]
        ours = grid(v["settings"], v["key"], a.d_in)
        for s in a.settings or (ours if a.set == 1 or a.device == "cuda" else ours[1:2]):
            for seed in range(a.seeds):
                if not a.peer_only:
                    yield "saeexp", variant, s, seed, a.root / "saeexp" / variant / fmt(s) / f"seed{seed}"
    if a.saeexp_only:
        return
    for arch in dict.fromkeys(VARIANTS[v]["peer"] for v in a.variants if "peer" in VARIANTS[v]):
        theirs = grid(PEERS[arch], arch, a.d_in)
        for s in a.peer_settings or (theirs if a.set == 1 or a.device == "cuda" else theirs[1:2]):
            for seed in range(a.seeds):
                yield "saelens", arch, s, seed, a.root / "saelens" / arch / fmt(s) / f"seed{seed}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", type=int, choices=sorted(quality_sets.SETS), default=1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--settings", default=None, help="comma-separated coefficients / k for every saeexp variant asked")
    ap.add_argument("--peer-settings", default=None, help="the same for the SAELens architectures asked")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens (default: the set's budget)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", type=Path, default=HERE.parent / "out")  # bench/out/, git-ignored
    ap.add_argument("--saeexp-only", action="store_true")
    ap.add_argument("--peer-only", action="store_true")
    ap.add_argument("--redo", action="store_true",
                    help="retrain the saeexp runs asked for even if finished (after a fix); SAELens' runs are kept")
    ap.add_argument("--report-only", action="store_true", help="train nothing: tables and plots of what is there")
    ap.add_argument("--override", nargs="*", default=[],
                    help="more saeexp overrides for every saeexp run (e.g. train.b_dec_init=zeros); use a fresh --out")
    ap.add_argument("--no-crosscheck", action="store_true", help="skip SAELens' own evaluation (set 1)")
    a = ap.parse_args(argv)
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; expected some of {list(VARIANTS)}")
    # a variant's base must be measured too
    a.variants += [VARIANTS[v]["base"] for v in list(a.variants) if "base" in VARIANTS[v] and VARIANTS[v]["base"] not in a.variants]
    keys = {VARIANTS[v]["key"] for v in a.variants}
    if a.settings and len(keys) > 1:
        ap.error(f"--settings: the variants asked sweep different keys {sorted(keys)}; ask them in separate runs")
    peers = {VARIANTS[v]["peer"] for v in a.variants if "peer" in VARIANTS[v]}
    if a.peer_settings and len({p in ("topk", "batchtopk") for p in peers}) > 1:
        ap.error(f"--peer-settings: SAELens' {sorted(peers)} mix k and coefficients; ask them in separate runs")
    a.settings = [float(s) for s in a.settings.split(",")] if a.settings else None
    a.peer_settings = [float(s) for s in a.peer_settings.split(",")] if a.peer_settings else None
    a.tokens = a.tokens or quality_sets.SETS[a.set]["tokens"]
    a.root = (a.out / f"set{a.set}-{a.tokens}tok").resolve()
    if a.report_only:
        return quality_report.report(a.root, VARIANTS, a.variants)
    spec = quality_sets.build(a.set)
    if not a.saeexp_only:
        a.peer_python = subprocess.run([str(REPO / "scripts" / "saelens-venv.sh")], check=True, text=True,
                                       stdout=subprocess.PIPE).stdout.strip()
    print(f"bench_quality: set {a.set} (d_in {spec['data']['d_in']}, {spec['data']['n_features']} true features, "
          f"true L0 {spec['true_l0']:.2f}), width {spec['width']}, {a.tokens:,} tokens -> {a.root}")
    x, codes, truth = quality_sets.heldout(spec)
    a.d_in = spec["data"]["d_in"]
    todo = list(jobs(a))
    for i, (lib, name, s, seed, folder) in enumerate(todo):
        if (folder / "score.json").exists() and not (a.redo and lib == "saeexp"):
            continue
        print(f"[{i + 1}/{len(todo)}] {lib} {name} {fmt(s)} seed {seed} ...", flush=True)
        wall = (saeexp_run if lib == "saeexp" else peer_run)(spec, a, name, s, seed, folder)
        try:
            sae = __import__("saeexp").load_sae(folder) if lib == "saeexp" else load_peer(folder)
        except Exception as e:  # noqa: BLE001 - a failed run is reported and left out; a rerun retries it
            print(f"  no SAE to score ({type(e).__name__}: {e})")
            continue
        result = {"library": lib, "name": name, "setting": s, "seed": seed, "wall_seconds": wall, "code": CODE,
                  **score(sae, x, codes, truth)}
        (folder / "score.json").write_text(json.dumps(result, indent=2))
        print(f"  L0 {result['l0']:.1f}  FVU {result['fvu']:.3f}  recovered@0.9 {result['recovered']:.3f}  "
              f"MCC {result['mcc']:.3f}  dead {result['dead_frac']:.3f}  ({wall:.0f} s)", flush=True)
    if a.set == 1 and todo and not (a.no_crosscheck or a.saeexp_only):
        folders = [str(f) for *_, f in todo if (f / "score.json").exists() and not (f / "saelens_eval.json").exists()]
        if folders:
            print(f"sae_lens.synthetic cross-check of {len(folders)} SAEs ...", flush=True)
            subprocess.run([a.peer_python, str(HERE / "saelens_eval.py"), "--spec", spec["dir"], *folders], check=False)
    quality_report.report(a.root, VARIANTS, a.variants)


if __name__ == "__main__":
    main()
