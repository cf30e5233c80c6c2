"""The report's HTML in a real headless Chromium: every series has a point drawn inside each plot area, and the
page logged no script error. Chromium is part of the project's setup (scripts/setup-browser.sh): missing, the
test fails."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from saeexp.report.frontier import CE, FVU, L0, Point, mark_frontiers
from saeexp.report.plots import interactive_html

SERIES = {"relu+l1": 1.0, "relu+l1_decoder_norm": 0.9, "topk": 0.8, "gated d_sae=64": 0.7, "gated d_sae=128": 0.6}


def _points():
    points = []
    for label, q in SERIES.items():
        for t in (8, 16, 32, 64):
            fvu = q * 4 / t
            points.append(Point(label, label, "target_l0", str(t), mean={L0: t * 1.02, FVU: fvu, CE: 1 - fvu / 2},
                                sd={L0: 0.3, FVU: 0.01, CE: 0.005}, n=2, run_ids=[f"{label}-{t}"]))
    return points


class _Dom(HTMLParser):
    """Plot areas, series groups and their circles, per <svg> panel; the page-errors text."""

    def __init__(self):
        super().__init__()
        self.panels, self.errors, self._series, self._in_errors = [], "", None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.panels.append({"area": None, "circles": {}})
        elif tag == "rect" and "plot-area" in a.get("class", ""):
            self.panels[-1]["area"] = tuple(float(a[k]) for k in ("x", "y", "width", "height"))
        elif tag == "g" and "data-series" in a:
            self._series = a["data-series"]
        elif tag == "circle" and self._series is not None:
            self.panels[-1]["circles"].setdefault(self._series, []).append((float(a["cx"]), float(a["cy"])))
        elif tag == "pre" and a.get("id") == "page-errors":
            self._in_errors = True

    def handle_endtag(self, tag):
        if tag == "g":
            self._series = None
        elif tag == "pre":
            self._in_errors = False

    def handle_data(self, data):
        if self._in_errors:
            self.errors += data


def _render(path, tmp_path) -> _Dom:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run scripts/setup-browser.sh (make install does)"
    p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                        "--disable-background-networking", "--disable-component-update",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                        path.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "<svg" in p.stdout, p.stderr[-2000:]
    dom = _Dom()
    dom.feed(p.stdout)
    return dom


@pytest.fixture
def page(tmp_path):
    by_series = mark_frontiers(_points())
    return interactive_html(by_series, tmp_path / "pareto.html", "Pareto frontiers: browser test")


def test_every_series_is_drawn_inside_each_plot_area(page, tmp_path):
    dom = _render(page, tmp_path)
    assert dom.errors.strip() == ""
    assert len(dom.panels) == 2  # L0 against FVU, and against CE loss recovered
    for panel in dom.panels:
        x, y, w, h = panel["area"]
        assert set(panel["circles"]) == set(SERIES)
        for series, circles in panel["circles"].items():
            inside = [(cx, cy) for cx, cy in circles if x <= cx <= x + w and y <= cy <= y + h]
            assert len(inside) == 4, (series, circles, panel["area"])


def test_a_script_error_shows_on_the_page(page, tmp_path):
    """The check above would see a broken page: an error thrown by any script lands in #page-errors."""
    page.write_text(page.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    assert "undefinedFunction" in _render(page, tmp_path).errors
