"""Pareto frontiers of a sweep: points averaged over seeds, and which of them no other point beats."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# the final metrics `train` logs (saeexp.report.write_report): stable names the MLflow scatter chart can use
L0, FVU, CE = "final/l0", "final/fvu", "final/ce_loss_recovered"


@dataclass
class Point:
    """One (variant, coefficient, width) cell of a sweep, its metrics averaged over seeds."""

    variant: str
    coefficient: str
    width: str
    mean: dict = field(default_factory=dict)   # metric -> mean over seeds
    sd: dict = field(default_factory=dict)     # metric -> sample standard deviation over seeds (0 for one seed)
    n: int = 0
    run_ids: list = field(default_factory=list)
    frontier: dict = field(default_factory=dict)  # y metric -> on that variant's frontier


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def aggregate(runs: list[dict]) -> list[Point]:
    """Runs as {"variant", "coefficient", "width", "run_id", "metrics"} -> one Point per cell, seeds pooled."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["variant"], r["coefficient"], r["width"]), []).append(r)
    points = []
    for (variant, coef, width), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], _num(kv[0][2]), _num(kv[0][1]))):
        p = Point(variant, coef, width, n=len(rs), run_ids=[r["run_id"] for r in rs])
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
    """Per variant, flag the frontier of L0 against FVU (lower better) and against CE recovered (higher better)."""
    by_variant: dict[str, list[Point]] = {}
    for p in points:
        by_variant.setdefault(p.variant, []).append(p)
    for ps in by_variant.values():
        for y, higher in ((FVU, False), (CE, True)):
            have = [p for p in ps if L0 in p.mean and y in p.mean]
            for p, on in zip(have, pareto_mask([p.mean[L0] for p in have], [p.mean[y] for p in have], higher)):
                p.frontier[y] = on
    return by_variant


def table(points: list[Point]) -> str:
    """A plain-text table, one row per cell; `*` marks frontier points (FVU, then CE recovered)."""
    has_ce = any(CE in p.mean for p in points)
    head = ["variant", "coef", "width", "seeds", "L0", "FVU"] + (["CE rec"] if has_ce else []) + ["frontier"]
    rows = []
    for p in points:
        def fmt(k, digits):
            if k not in p.mean:
                return "-"
            return f"{p.mean[k]:.{digits}f}" + (f" ± {p.sd[k]:.{digits}f}" if p.n > 1 else "")
        marks = ("F" if p.frontier.get(FVU) else "") + ("C" if p.frontier.get(CE) else "")
        rows.append([p.variant, p.coefficient, p.width, str(p.n), fmt(L0, 2), fmt(FVU, 4)]
                    + ([fmt(CE, 4)] if has_ce else []) + [marks or "."])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = "frontier: F = on the variant's L0-FVU frontier"
    legend += ", C = on its L0-CE-recovered frontier" if has_ce else ""
    return "\n".join(lines + [legend])
