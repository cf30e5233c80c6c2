"""Pareto frontiers of a sweep: per series, points averaged over seeds, and which of them no other point beats."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# the final metrics `train` logs (saeexp.report.write_report): stable names the MLflow scatter chart can use
L0, FVU, CE = "final/l0", "final/fvu", "final/ce_loss_recovered"


@dataclass
class Point:
    """One value of a series' sparsity control (coefficient, k or target L0), its metrics averaged over seeds."""

    series: str        # the series id (saeexp.sweep.series): runs that differ in nothing but seed and control
    label: str         # what the series differs from the others in: `relu+l1_decoder_norm`, `topk d_sae=64`
    control: str       # sparsity control name: coefficient | k | target_l0
    value: str         # its value
    mean: dict = field(default_factory=dict)   # metric -> mean over seeds
    sd: dict = field(default_factory=dict)     # metric -> sample standard deviation over seeds (0 for one seed)
    n: int = 0
    run_ids: list = field(default_factory=list)
    frontier: dict = field(default_factory=dict)  # y metric -> on that series' frontier
    failed: bool = False  # a seed finished without learning (tag saeexp.learning=failed:...): never on a frontier
    suspect: bool = False  # a seed's SAE looks degenerate (saeexp.learning=suspect:..., report/verdict.py): neither

    @property
    def apart(self) -> bool:
        """Drawn apart (hollow) and kept off every frontier: a seed failed or looks degenerate."""
        return self.failed or self.suspect


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def aggregate(runs: list[dict]) -> list[Point]:
    """Runs as {"series", "label", "control", "value", "run_id", "metrics"} -> one Point per (series, control
    value), seeds pooled: runs are pooled only when they differ in nothing but the seed."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["series"], r["control"], r["value"]), []).append(r)
    points = []
    order = sorted(cells.items(), key=lambda kv: (kv[1][0]["label"], kv[0][1], _num(kv[0][2]), kv[0][2]))
    for (series, control, value), rs in order:
        p = Point(series, rs[0]["label"], control, value, n=len(rs), run_ids=[r["run_id"] for r in rs],
                  failed=any(r.get("failed") for r in rs), suspect=any(r.get("suspect") for r in rs))
        for name in {k for r in rs for k in r["metrics"]}:
            xs = [r["metrics"][name] for r in rs if name in r["metrics"] and r["metrics"][name] == r["metrics"][name]]
            if len(xs) == len(rs):  # a metric only when every seed has it
                p.mean[name], p.sd[name] = _mean_sd(xs)
        points.append(p)
    return points


def _num(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.inf


def pareto_mask(xs: list[float], ys: list[float], higher_is_better: bool = False) -> list[bool]:
    """True where no other point has x <= and y at least as good, better in one (lower x is always better)."""
    sign = -1.0 if higher_is_better else 1.0
    keep = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        dominated = any(xj <= x and sign * yj <= sign * y and (xj < x or sign * yj < sign * y)
                        for j, (xj, yj) in enumerate(zip(xs, ys)) if j != i)
        keep.append(not dominated)
    return keep


def mark_frontiers(points: list[Point]) -> dict[str, list[Point]]:
    """Per series (by label), flag the frontier of L0 against FVU (lower better) and CE recovered (higher better)."""
    by_series: dict[str, list[Point]] = {}
    for p in points:
        by_series.setdefault(p.label, []).append(p)
    for ps in by_series.values():
        for y, higher in ((FVU, False), (CE, True)):
            have = [p for p in ps if L0 in p.mean and y in p.mean and not p.apart]
            for p, on in zip(have, pareto_mask([p.mean[L0] for p in have], [p.mean[y] for p in have], higher)):
                p.frontier[y] = on
    return by_series


def _fmt(p: Point, k: str, digits: int) -> str:
    if k not in p.mean:
        return "-"
    return f"{p.mean[k]:.{digits}f}" + (f" ± {p.sd[k]:.{digits}f}" if p.n > 1 else "")


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(points: list[Point]) -> str:
    """A plain-text table, one row per point; `*` marks frontier points (FVU, then CE recovered)."""
    has_ce = any(CE in p.mean for p in points)
    head = ["series", "control", "value", "seeds", "L0", "FVU"] + (["CE rec"] if has_ce else []) + ["frontier"]
    rows = []
    for p in points:
        marks = ("F" if p.frontier.get(FVU) else "") + ("C" if p.frontier.get(CE) else "")
        marks = "failed" if p.failed else "suspect" if p.suspect else marks
        rows.append([p.label, p.control, p.value, str(p.n), _fmt(p, L0, 2), _fmt(p, FVU, 4)]
                    + ([_fmt(p, CE, 4)] if has_ce else []) + [marks or "."])
    legend = "frontier: F = on the series' L0-FVU frontier"
    legend += ", C = on its L0-CE-recovered frontier" if has_ce else ""
    if any(p.apart for p in points):
        legend += ("; failed / suspect: a seed did not learn / looks degenerate (tag saeexp.learning), "
                   "kept off frontiers")
    return "\n".join(_grid(head, rows) + [legend])


def matched_table(points: list[Point]) -> str:
    """Series against target L0 (runs trained with train.target_l0): FVU (and CE recovered) at each target,
    with the held-out L0 reached; empty when no run had a target."""
    targeted = [p for p in points if p.control == "target_l0"]
    if not targeted:
        return ""
    targets = sorted({p.value for p in targeted}, key=_num)
    labels = list(dict.fromkeys(p.label for p in targeted))
    cell = {(p.label, p.value): p for p in targeted}
    has_ce = any(CE in p.mean for p in targeted)
    rows = []
    for label in labels:
        row = [label]
        for t in targets:
            p = cell.get((label, t))
            if p is None:
                row.append("-")
                continue
            text = f"{_fmt(p, FVU, 4)} (L0 {p.mean.get(L0, float('nan')):.1f})"
            row.append(text + (f" CE {_fmt(p, CE, 3)}" if has_ce else ""))
        rows.append(row)
    title = ("matched L0: FVU" + (" and CE loss recovered" if has_ce else "")
             + " at each train.target_l0 (mean ± sd over seeds; held-out L0 reached)")
    return "\n".join([title] + _grid(["series"] + [f"L0 {t}" for t in targets], rows))
