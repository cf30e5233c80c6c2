"""The Pareto plots a sweep report logs: a PNG, and a self-contained interactive HTML (no network, no JS library)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from saeexp.report.frontier import CE, FVU, L0, Point

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22"]
MARKERS = "osD^vP*X"  # with more series than colours, the marker tells them apart
# every script error (and unhandled rejection) is written into the page, where a reader and a test see it
ERRORS_JS = ("window.addEventListener('error', e => { const p = document.getElementById('page-errors'); "
             "if (p) p.textContent += 'error: ' + e.message + '\\n'; else document.title += ' [error: ' + e.message "
             "+ ']'; }); window.addEventListener('unhandledrejection', e => { const p = "
             "document.getElementById('page-errors'); if (p) p.textContent += 'error: ' + e.reason + '\\n'; });")
PANELS = [(FVU, "FVU (lower is better)"), (CE, "CE loss recovered (higher is better)")]


def _panels(points):
    return [(y, label) for y, label in PANELS if any(y in p.mean and L0 in p.mean for p in points)]


def png(by_series: dict[str, list[Point]], path: Path, title: str) -> Path:
    """Every series overlaid: means with seed error bars (both axes), its frontier as a line."""
    import matplotlib  # noqa: PLC0415 - matplotlib is heavy: imported when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - as above

    points = [p for ps in by_series.values() for p in ps]
    panels = _panels(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (y, label) in zip(axes[0], panels):
        for i, (name, ps) in enumerate(sorted(by_series.items())):
            ps = sorted((p for p in ps if y in p.mean and L0 in p.mean), key=lambda p: p.mean[L0])
            if not ps:
                continue
            c, mk = COLORS[i % len(COLORS)], MARKERS[(i // len(COLORS)) % len(MARKERS)]
            ax.errorbar([p.mean[L0] for p in ps], [p.mean[y] for p in ps], xerr=[p.sd[L0] for p in ps],
                        yerr=[p.sd[y] for p in ps], fmt=mk, color=c, alpha=0.45, ms=4, capsize=2)
            bad = [p for p in ps if p.apart]  # did not learn, or degenerate: hollow, never on the frontier line
            if bad:
                ax.plot([p.mean[L0] for p in bad], [p.mean[y] for p in bad], mk, mfc="white", mec=c, ms=7)
            front = [p for p in ps if p.frontier.get(y)]
            ax.plot([p.mean[L0] for p in front], [p.mean[y] for p in front], "-" + mk, color=c, ms=5, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(title="series (line: frontier)", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _x_lo(p: Point) -> float:
    """Left end of the L0 error bar on a log axis (clipped at half the mean, never at or below 0)."""
    return max(p.mean[L0] - p.sd[L0], 0.5 * p.mean[L0], 1e-6)


def _svg_panel(by_series, y, label, w=560, h=400, pad=60) -> str:
    pts = [p for ps in by_series.values() for p in ps if y in p.mean and L0 in p.mean]
    xs = [math.log10(v) for p in pts for v in (_x_lo(p), p.mean[L0] + p.sd[L0]) if v > 0] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(p.mean[y] - p.sd[y] for p in pts), max(p.mean[y] + p.sd[y] for p in pts)
    x0, x1 = (x0 - 0.05, x1 + 0.05) if x1 - x0 < 1e-9 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.05, y1 + 0.05) if y1 - y0 < 1e-12 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))
    X = lambda v: pad + (math.log10(max(v, 1e-6)) - x0) / (x1 - x0) * (w - 2 * pad)  # noqa: E731
    Y = lambda v: h - pad + (v - y0) / (y1 - y0) * (2 * pad - h)  # noqa: E731
    out = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">',
           f'<rect class="plot-area" x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
           'fill="none" stroke="#999"/>',
           f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">L0 (log scale)</text>',
           f'<text x="15" y="{h / 2}" text-anchor="middle" transform="rotate(-90 15 {h / 2})">'
           f'{html.escape(label)}</text>']
    for k in range(5):  # axis ticks
        lx, ly = x0 + k * (x1 - x0) / 4, y0 + k * (y1 - y0) / 4
        out.append(f'<text x="{X(10 ** lx):.1f}" y="{h - pad + 15}" text-anchor="middle">{10 ** lx:.3g}</text>')
        out.append(f'<text x="{pad - 5}" y="{Y(ly) + 4:.1f}" text-anchor="end">{ly:.3g}</text>')
    for i, (series, ps) in enumerate(sorted(by_series.items())):
        c = COLORS[i % len(COLORS)]
        ps = sorted((p for p in ps if y in p.mean and L0 in p.mean), key=lambda p: p.mean[L0])
        g = [f'<g class="v" data-series="{html.escape(series)}">']
        front = [p for p in ps if p.frontier.get(y)]
        if len(front) > 1:
            g.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                     + " ".join(f"{X(p.mean[L0]):.1f},{Y(p.mean[y]):.1f}" for p in front) + '"/>')
        for p in ps:
            cx, cy = X(p.mean[L0]), Y(p.mean[y])
            if p.sd[y] > 0:
                g.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{Y(p.mean[y] - p.sd[y]):.1f}" '
                         f'y2="{Y(p.mean[y] + p.sd[y]):.1f}" stroke="{c}"/>')
            if p.sd[L0] > 0:
                g.append(f'<line y1="{cy:.1f}" y2="{cy:.1f}" x1="{X(_x_lo(p)):.1f}" '
                         f'x2="{X(p.mean[L0] + p.sd[L0]):.1f}" stroke="{c}"/>')
            tip = (f"{series} {p.control}={p.value} seeds={p.n}\nL0={p.mean[L0]:.3g}±{p.sd[L0]:.2g} "
                   f"{y}={p.mean[y]:.4g}±{p.sd[y]:.2g}" + (" (frontier)" if p.frontier.get(y) else ""))
            tip += " (did not learn)" if p.failed else " (suspect: looks degenerate)" if p.suspect else ""
            fill = 'fill="white" stroke-width="2" stroke="' + c + '"' if p.apart else f'fill="{c}"'  # hollow
            g.append(f'<circle class="{"apart" if p.apart else "pt"}" cx="{cx:.1f}" cy="{cy:.1f}" '
                     f'r="{6 if p.frontier.get(y) else 4}" {fill} '
                     f'fill-opacity="{1 if p.frontier.get(y) or p.apart else 0.4}"><title>{html.escape(tip)}'
                     '</title></circle>')
        out += g + ["</g>"]
    return "\n".join(out + ["</svg>"])


def interactive_html(by_series: dict[str, list[Point]], path: Path, title: str) -> Path:
    """Hover a point for its series, control value and metrics; tick a series in the legend to show or hide it.
    A script error on the page is shown on it (`#page-errors`), so a broken page never looks like an empty one."""
    points = [p for ps in by_series.values() for p in ps]
    legend = "".join(f'<label style="color:{COLORS[i % len(COLORS)]};margin-right:1em"><input type="checkbox" checked '
                     f'data-series="{html.escape(v)}"> {html.escape(v)}</label>'
                     for i, v in enumerate(sorted(by_series)))
    panels = "".join(_svg_panel(by_series, y, label) for y, label in _panels(points))
    data = json.dumps([{"series": p.label, "control": p.control, "value": p.value, "seeds": p.n,
                        "mean": p.mean, "sd": p.sd, "frontier": p.frontier, "run_ids": p.run_ids} for p in points])
    data = data.replace("</", "<\\/")  # JSON inside <script>: no closing tag may end it early
    script = ("document.querySelectorAll('input[data-series]').forEach(b => b.addEventListener('change', () => "
              "document.querySelectorAll('g.v').forEach(g => { if (g.dataset.series === b.dataset.series) "
              "g.style.display = b.checked ? '' : 'none'; })));")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<script>{ERRORS_JS}</script></head>"
                    "<body style='font-family:sans-serif'><pre id='page-errors' style='color:red'></pre>"
                    f"<h3>{html.escape(title)}</h3><div>{legend}</div>"
                    f"<div>{panels}</div><p>Large dots joined by a line: each series' frontier (means over seeds; "
                    "bars: one standard deviation over seeds, both axes).</p>"
                    f"<script id='points' type='application/json'>{data}</script>"
                    f"<script>{script}</script></body></html>")
    return path
