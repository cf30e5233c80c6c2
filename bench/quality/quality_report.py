"""The quality benchmark's comparison: curves over settings (means over seeds), matched-L0 gaps, PNGs."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

METRICS = ("l0", "fvu", "l2_ratio", "dead_frac", "recovered", "mcc", "gt_mmcs", "wall_seconds")
CROSS = ("sae_l0", "explained_variance", "mcc", "dead_latents", "shrinkage")  # sae_lens.synthetic's names
TARGET_FVU, TARGET_REC = 0.01, 0.02  # issue 8: FVU <= reference + 0.01, recovered@0.9 >= reference - 0.02


def load(root: Path) -> dict:
    """{(library, name): [point per setting: means (and per-seed values) over seeds]}, sorted by L0."""
    runs = defaultdict(list)
    for f in root.glob("*/*/*/seed*/score.json"):
        r = json.loads(f.read_text())
        cross = f.parent / "saelens_eval.json"
        if cross.exists():
            r["saelens_eval"] = json.loads(cross.read_text())
        runs[(r["library"], r["name"], r["setting"])].append(r)
    curves = defaultdict(list)
    for (lib, name, setting), rs in runs.items():
        point = {"setting": setting, "seeds": len(rs), "per_seed": {m: [r[m] for r in rs] for m in METRICS}}
        point.update({m: sum(r[m] for r in rs) / len(rs) for m in METRICS})
        point["log_l0"] = sum(math.log(max(r["l0"], 1e-6)) for r in rs) / len(rs)  # mean in log L0
        evals = [r["saelens_eval"] for r in rs if "saelens_eval" in r]
        if evals:
            point["saelens_eval"] = {k: sum(e[k] for e in evals) / len(evals) for k in CROSS}
        curves[(lib, name)].append(point)
    for pts in curves.values():
        pts.sort(key=lambda p: p["log_l0"])
    return curves


def interp(pts: list, log_l0: float, key: str) -> float:
    """Linear in log L0 between the two settings around it (pts sorted by log_l0); the end value just outside."""
    for lo, hi in zip(pts, pts[1:]):
        if lo["log_l0"] <= log_l0 <= hi["log_l0"]:
            w = 0.0 if hi["log_l0"] == lo["log_l0"] else (log_l0 - lo["log_l0"]) / (hi["log_l0"] - lo["log_l0"])
            return lo[key] + w * (hi[key] - lo[key])
    return (pts[0] if log_l0 <= pts[0]["log_l0"] else pts[-1])[key]  # at an end (within compare's 1%)


def learned(pts: list) -> list:
    """The settings that learned: a mean FVU >= 1 (e.g. SAELens' standard at coefficient 15, L0 0) is kept
    off frontiers, as saeexp-pareto does with `saeexp.learning=failed` runs (issue 8, item 4)."""
    return [p for p in pts if p["fvu"] < 1]


def compare(ours: list, ref: list, same_k: bool = False) -> dict:
    """saeexp's curve against a reference at matched L0, only inside both curves' L0 range; with `same_k` (both
    swept over k) at each k both have, as issue 8 asks of BatchTopK against TopK (BatchTopK's inference threshold
    ends near k, 9.9 at k 10, not at it)."""
    ours, ref = learned(ours), learned(ref)
    if not ours or not ref:
        return {"overlap": None, "l0_range": [math.nan] * 2, "ref_l0_range": [math.nan] * 2}
    lo = max(ours[0]["log_l0"], ref[0]["log_l0"])
    hi = min(ours[-1]["log_l0"], ref[-1]["log_l0"])
    ranges = {"l0_range": [math.exp(ours[0]["log_l0"]), math.exp(ours[-1]["log_l0"])],
              "ref_l0_range": [math.exp(ref[0]["log_l0"]), math.exp(ref[-1]["log_l0"])]}
    if same_k:
        pairs = [(a, b) for a in ours for b in ref if a["setting"] == b["setting"]]
        if not pairs:
            return {**ranges, "overlap": None}
        lo, hi = min(a["log_l0"] for a, _ in pairs), max(a["log_l0"] for a, _ in pairs)
        rows = [{"k": a["setting"], "l0": a["l0"], **{f"{k}_{side}": pt[k] for k in ("fvu", "recovered", "mcc")
                                                      for side, pt in (("ours", a), ("ref", b))}} for a, b in pairs]
        return _diffs(ranges, lo, hi, rows)
    at = sorted({p["log_l0"] for p in ours + ref if lo <= p["log_l0"] <= hi})
    if not at:
        return {**ranges, "overlap": None}
    rows = [{"l0": math.exp(g), **{f"{k}_{side}": interp(pts, g, k) for k in ("fvu", "recovered", "mcc")
                                   for side, pts in (("ours", ours), ("ref", ref))}} for g in at]
    return _diffs(ranges, lo, hi, rows)


def _diffs(ranges: dict, lo: float, hi: float, rows: list) -> dict:
    d_fvu = [r["fvu_ours"] - r["fvu_ref"] for r in rows]
    d_rec = [r["recovered_ours"] - r["recovered_ref"] for r in rows]
    return {**ranges, "overlap": [math.exp(lo), math.exp(hi)], "matched": rows,
            "fvu_diff_mean": sum(d_fvu) / len(d_fvu), "fvu_diff_max": max(d_fvu),
            "rec_diff_mean": sum(d_rec) / len(d_rec), "rec_diff_min": min(d_rec),
            "meets": max(d_fvu) <= TARGET_FVU and min(d_rec) >= -TARGET_REC}


def report(root: Path, variants: dict, asked: list) -> dict:
    curves = load(root)
    if not curves:
        print(f"no finished runs under {root}")
        return {}
    comparisons = {}
    for name in asked:
        ours = curves.get(("saeexp", name))
        if not ours:
            continue
        v = variants[name]
        refs = ([("SAELens " + v["peer"], curves.get(("saelens", v["peer"])))] if "peer" in v else []) + \
               ([("saeexp " + v["base"], curves.get(("saeexp", v["base"])))] if "base" in v else [])
        same_k = v["key"] == "model.k"  # a k-swept variant's references (topk, batchtopk) are swept over k too
        comparisons[name] = {label: compare(ours, ref, same_k) for label, ref in refs if ref}
    _print(curves, comparisons, asked)
    plots = _plot(root, curves, variants, asked)
    out = {"curves": {f"{lib}/{name}": pts for (lib, name), pts in curves.items()}, "comparisons": comparisons,
           "plots": plots}
    (root / "results.json").write_text(json.dumps(out, indent=2))
    print(f"results: {root / 'results.json'}; plots: {', '.join(Path(p).name for p in plots)}")
    return out


def _print(curves, comparisons, asked) -> None:
    print("\nper setting (means over seeds; saeexp's metrics on held-out rows):")
    print(f"{'library':8} {'variant':22} {'setting':>8} {'seeds':>5} {'L0':>7} {'FVU':>7} {'L2r':>6} {'dead':>6} "
          f"{'rec@.9':>7} {'MCC':>6} {'sec':>6}  sae_lens.synthetic: L0 / EV / MCC(dec)")
    for (lib, name), pts in sorted(curves.items()):
        for p in pts:
            c = p.get("saelens_eval")
            cs = f"  {c['sae_l0']:.1f} / {c['explained_variance']:.3f} / {c['mcc']:.3f}" if c else ""
            print(f"{lib:8} {name:22} {p['setting']:>8g} {p['seeds']:>5} {p['l0']:>7.1f} {p['fvu']:>7.3f} "
                  f"{p['l2_ratio']:>6.3f} {p['dead_frac']:>6.3f} {p['recovered']:>7.3f} {p['mcc']:>6.3f} "
                  f"{p['wall_seconds']:>6.0f}{cs}")
    print("\nat matched L0 (linear in log L0, inside both curves' range, settings with FVU >= 1 left out; TopK"
          " variants at the same k; diff = saeexp - reference):")
    for name in asked:
        for label, c in comparisons.get(name, {}).items():
            if c["overlap"] is None:
                print(f"  {name:22} vs {label:22} GAP: L0 {c['l0_range'][0]:.1f}-{c['l0_range'][1]:.1f} vs "
                      f"{c['ref_l0_range'][0]:.1f}-{c['ref_l0_range'][1]:.1f}, no overlap")
                continue
            at = ("k " + ", ".join(f"{r['k']:g}" for r in c["matched"]) if "k" in c["matched"][0]
                  else f"L0 {c['overlap'][0]:.1f}-{c['overlap'][1]:.1f}")
            print(f"  {name:22} vs {label:22} {at}: FVU diff mean "
                  f"{c['fvu_diff_mean']:+.3f} max {c['fvu_diff_max']:+.3f}; recovered diff mean "
                  f"{c['rec_diff_mean']:+.3f} min {c['rec_diff_min']:+.3f}  {'meets' if c['meets'] else 'MISSES'}")


def _plot(root: Path, curves, variants, asked) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(axes, pts, label, style, color=None):
        l0 = [math.exp(p["log_l0"]) for p in pts]
        line = axes[0].plot(l0, [p["fvu"] for p in pts], style, label=label, color=color)[0]
        axes[1].plot(l0, [p["recovered"] for p in pts], style, label=label, color=line.get_color())
        for p in pts:  # each seed, faint
            axes[0].scatter(p["per_seed"]["l0"], p["per_seed"]["fvu"], s=8, alpha=0.3, color=line.get_color())
            axes[1].scatter(p["per_seed"]["l0"], p["per_seed"]["recovered"], s=8, alpha=0.3, color=line.get_color())

    def finish(fig, axes, title, path):
        for ax, ylabel in zip(axes, ("FVU (held out)", "true features recovered (cos > 0.9)")):
            ax.set_xscale("log")
            ax.set_xlabel("L0")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return str(path)

    paths = []
    overlay, oaxes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in asked:
        ours = curves.get(("saeexp", name))
        if not ours:
            continue
        v = variants[name]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        draw(axes, ours, f"saeexp {name}", "o-")
        refs = ([("saelens", v["peer"], "SAELens ")] if "peer" in v else []) + \
               ([("saeexp", v["base"], "saeexp ")] if "base" in v else [])
        for lib, ref, prefix in refs:
            if curves.get((lib, ref)):
                draw(axes, curves[(lib, ref)], prefix + ref, "s--")
        paths.append(finish(fig, axes, f"{name}: saeexp vs reference", root / f"{name.replace('+', '_')}.png"))
        draw(oaxes, ours, f"saeexp {name}", "o-")
    for (lib, name), pts in sorted(curves.items()):
        if lib == "saelens":
            draw(oaxes, pts, f"SAELens {name}", "s--")
    paths.append(finish(overlay, oaxes, "all variants (saeexp solid, SAELens dashed)", root / "overlay.png"))
    return paths
