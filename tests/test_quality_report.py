"""The quality benchmark's comparison rule (bench/quality/quality_report.py), against hand computations."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "quality"))
import quality_report as qr  # noqa: E402


def pt(setting, l0, fvu, rec, mcc=0.5):
    return {"setting": setting, "l0": l0, "log_l0": math.log(l0), "fvu": fvu, "recovered": rec, "mcc": mcc}


def test_matched_l0_interpolates_in_log_l0_inside_both_ranges():
    ours = [pt(0.1, 5, 0.40, 0.90), pt(0.03, 20, 0.20, 0.98)]
    ref = [pt(5, 10, 0.31, 0.95), pt(1, 40, 0.10, 0.99)]
    c = qr.compare(ours, ref)
    assert c["overlap"] == pytest.approx([10, 20])  # ours' 5 and ref's 40 are outside the other curve
    at10 = next(r for r in c["matched"] if abs(r["l0"] - 10) < 1e-9)
    assert math.isclose(at10["fvu_ours"], 0.30)  # halfway from 5 to 20 in log L0
    assert math.isclose(at10["fvu_ref"], 0.31)
    at20 = next(r for r in c["matched"] if abs(r["l0"] - 20) < 1e-9)
    assert math.isclose(at20["fvu_ref"], 0.205) and math.isclose(at20["recovered_ref"], 0.97)
    assert math.isclose(c["fvu_diff_max"], -0.005) and math.isclose(c["rec_diff_min"], -0.01)  # 0.94 vs 0.95 at L0 10
    assert c["meets"]  # FVU no worse than +0.01, recovered no less than -0.02


def test_a_miss_and_a_gap_are_reported():
    ours = [pt(0.1, 5, 0.40, 0.90), pt(0.03, 20, 0.20, 0.90)]
    ref = [pt(5, 10, 0.31, 0.95), pt(1, 40, 0.10, 0.99)]
    assert not qr.compare(ours, ref)["meets"]  # recovered 0.07 short at L0 20
    assert qr.compare([pt(1, 50, 0.1, 1)], ref)["overlap"] is None
    assert qr.compare(ours, [pt(15, 2, 2.0, 0)])["overlap"] is None  # FVU >= 1 is not a frontier point


def test_topk_variants_are_compared_at_the_same_k_not_at_matched_l0():
    ours = [pt(10, 9.9, 0.22, 0.74), pt(20, 19.7, 0.15, 0.80)]  # BatchTopK's threshold ends just under k
    ref = [pt(5, 5.0, 0.20, 1.00), pt(10, 10.0, 0.155, 1.00)]
    assert qr.compare(ours, ref)["overlap"] is not None  # matched L0 would interpolate inside 9.9-10
    c = qr.compare(ours, ref, same_k=True)
    assert [r["k"] for r in c["matched"]] == [10]
    assert math.isclose(c["fvu_diff_max"], 0.065) and math.isclose(c["rec_diff_min"], -0.26)
    assert not c["meets"]
