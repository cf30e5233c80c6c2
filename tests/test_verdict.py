"""saeexp.report.verdict: degenerate SAEs are told apart from good ones, the hint says which way to move, and the
Pareto report draws a suspect run apart and keeps it off the frontier.

The rows are end-of-run figures, inputs to pure functions (the issue-26 table, measured on one machine; nothing
here compares against a float this machine computes). `dense_l0`: the part of the L0 carried by latents firing on
more than 10% of held-out tokens. The runs themselves are in tests/test_defaults.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeexp.report.verdict import hint, judge, warning

ROOT = Path(__file__).resolve().parents[1]
SYN = dict(d_in=64, d_sae=1024)    # the default synthetic data (and the quality benchmark's set 1)
DEMO = dict(d_in=576, d_sae=4608)  # SmolLM2-135M layer 3 (experiment=demo): no ground truth

# name -> (shape, scalars, the reasons the verdict must name; () for a run that learned)
ROWS = {
    "saeexp (gated 4e-2)": (SYN, dict(l0=27.18, fvu=0.188, dead=18, dense=7, dense_l0=0.82, rec=0.967), ()),
    "model=relu (4e-2)": (SYN, dict(l0=26.54, fvu=0.336, dead=5, dense=7, dense_l0=0.81, rec=0.986), ()),
    "model=scsae (4e-2)": (SYN, dict(l0=7.90, fvu=0.355, dead=43, dense=0, dense_l0=0.0, rec=0.990), ()),
    "model=jumprelu loss.l0=5e-3": (SYN, dict(l0=30.93, fvu=0.044, dead=768, dense=128, dense_l0=30.92, rec=0.002),
                                    ("dense", "recovered")),
    "model=topk model.k=32": (SYN, dict(l0=32.0, fvu=0.084, dead=48, dense=58, dense_l0=8.65, rec=0.400),
                              ("dense", "recovered")),
    "model=batchtopk model.k=32": (SYN, dict(l0=31.83, fvu=0.040, dead=896, dense=128, dense_l0=31.83, rec=0.006),
                                   ("dense", "dead", "recovered")),
    "model=relu train.target_l0=8": (SYN, dict(l0=11.45, fvu=0.680, dead=470, dense=0, dense_l0=0.0, rec=0.354),
                                     ("recovered",)),
    "model=gated loss.l1=2e-3": (SYN, dict(l0=389.2, fvu=0.0016, dead=0, dense=1024, dense_l0=389.2, rec=0.002),
                                 ("l0", "dense", "recovered")),
    # the issue's data=lm run (gated, width 9216), stopped at step 50
    "data=lm (old defaults, step 50)": (dict(d_in=576, d_sae=9216), dict(l0=4610.0, fvu=0.110), ("l0",)),
    "experiment=demo": (DEMO, dict(l0=10.76, fvu=0.046, dead=556, dense=2, dense_l0=0.258), ()),
}


def _scalars(s: dict) -> dict:
    s = dict(s)
    if "rec" in s:
        s["gt_recovered@0.9"] = s.pop("rec")
    return s


def _named(verdict: str) -> set[str]:
    return {r.split("=")[0] for r in verdict.split(":", 1)[1].split(",")}


@pytest.mark.parametrize("name", ROWS)
def test_the_issues_rows(name):
    shape, scalars, reasons = ROWS[name]
    v = judge(_scalars(scalars), shape["d_in"], shape["d_sae"])
    if not reasons:
        assert v is None, (name, v)
    else:
        assert v is not None and v.startswith("suspect:"), (name, v)
        assert set(reasons) <= _named(v), (name, v)


def test_the_quality_benchmark_points_flagged_are_those_that_recover_under_half_or_leave_most_dead():
    """Both libraries' 53 set-1 points (bench/results): a point is flagged exactly when it recovers under half of
    the planted features or leaves most latents dead (that file has L0, dead and recovery; no dense counts)."""
    curves = json.loads((ROOT / "bench/results/set1-2026-12-02/results.json").read_text())["curves"]
    seen = 0
    for name, points in curves.items():
        for p in points:
            if p["fvu"] >= 1:
                continue  # SAELens' standard at 15: dead, a `failed` verdict
            scalars = {"l0": p["l0"], "fvu": p["fvu"], "dead": round(p["dead_frac"] * 1024),
                       "gt_recovered@0.9": p["recovered"]}
            v = judge(scalars, **SYN)
            assert (v is not None) == (p["recovered"] < 0.5 or p["dead_frac"] > 0.5), (name, p["setting"], v)
            seen += 1
    assert seen >= 50


def test_failed_runs_keep_their_verdict():
    assert judge({"fvu": 0.2}) is None  # nothing but FVU: only the reconstruction can be judged
    assert judge({"fvu": 6e12}, 64, 1024) == "failed:fvu=6e+12>=1"
    assert judge({"fvu": float("nan")}, 64, 1024) == "failed:fvu_undefined"


@pytest.mark.parametrize("control,verdict,expect", [
    (("coefficient", "0.005", ("loss.l0",)), "suspect:dense=128_latents_carry_100%_of_l0", "raise loss.l0"),
    (("coefficient", "0.1", ("loss.l1",)), "suspect:dead=90%", "lower loss.l1"),
    (("k", "6", ("model.k",)), "suspect:dead=62%", "model=topk"),
    (("k", "32", ("model.k",)), "suspect:dense=46_latents_carry_27%_of_l0", "lower model.k (now 32), e.g. model.k=6"),
    (("target_l0", "64", ("train.target_l0",)), "suspect:l0=66>=d_in=64", "train.target_l0 below 64"),
])
def test_the_hint_says_which_way(control, verdict, expect):
    line = warning(verdict, control, d_in=64, l0=66.0 if "l0=" in verdict else 30.0, true_l0=6.0)
    assert expect in line and "\n" not in line and line.startswith("saeexp: warning:")
    assert "train.target_l0=6" in hint(verdict, ("coefficient", "0.04", ("loss.l1",)), 64, 30.0, 6.0)


def test_a_target_that_was_missed_says_so():
    line = hint("suspect:recovered=0.354<0.5", ("target_l0", "8", ("train.target_l0",)), 64, l0=11.45, true_l0=6.0)
    assert "11.4" in line and "train.tokens" in line


def test_suspect_runs_are_drawn_apart_and_off_the_frontier(tmp_path):
    """Through an MLflow store as `train` writes it: the tag makes the point hollow and keeps it off."""
    from mlflow.tracking import MlflowClient

    from saeexp.jobs.pareto import report
    from saeexp.report.frontier import FVU, L0
    from saeexp.tracking.store import artifact_location

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("v", artifact_location=artifact_location(uri))
    # the dense run would dominate the series: the lowest FVU at a lower L0 than the good one
    for coef, l0, fvu, tag in [("0.1", 8.0, 0.30, None), ("0.04", 27.0, 0.19, None),
                               ("0.005", 26.0, 0.04, "suspect:dense=128_latents_carry_100%_of_l0")]:
        rid = client.create_run(exp, tags={"variant": "jumprelu", "sparsity_control": "coefficient",
                                           "sparsity_value": coef, "series_exclude": "loss.l0",
                                           **({"saeexp.learning": tag} if tag else {})}).info.run_id
        client.log_metric(rid, L0, l0)
        client.log_metric(rid, FVU, fvu)
        client.set_terminated(rid, "FINISHED")
    r = report("v", uri, tmp_path / "out", do_reconcile=False, log=False)
    by = {p["value"]: p for p in r["points"]}
    assert by["0.005"]["suspect"] and not by["0.005"]["frontier"].get(FVU)
    assert by["0.04"]["frontier"][FVU] and by["0.1"]["frontier"][FVU]  # what the dense run would have hidden
    assert "suspect" in r["table"]
    page = (tmp_path / "out" / "pareto.html").read_text()
    assert page.count('class="apart"') == 1 and "suspect: looks degenerate" in page
