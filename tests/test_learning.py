"""Every variant learns a planted dictionary through the user's entry point (`train_cfg(cfg)`, what `saeexp` runs).

Realistic ratios, not a toy: 256 true directions in 32 dimensions (8x overcomplete truth), about 5 active per
token with power-law frequencies, co-occurring pairs, magnitudes bounded away from zero, a little noise; the SAE
is twice as wide as the truth. Each variant runs at its defaults except its sparsity setting. A first-release
defect (the tied encoder's step-0 blow-up, issue 8) left decoders at random directions under exactly such
ratios while toy sizes still passed.
"""
import os

import pytest
from conftest import compose_cfg, train_cfg

DATA = ["data.d_in=32", "data.n_features=256", "data.max_p=0.2", "data.alpha=0.5", "data.magnitude=exponential",
        "data.min_magnitude=0.5", "data.noise=0.02", "data.groups=16", "data.group_size=2", "data.group_p=0.005"]
RECIPE = ["model.d_sae=512", "train.batch_size=2048", "optimizer.lr=4e-3", "train.tokens=1_200_000",
          "train.log_every=100", "train.checkpoint_every=100000"]
# (variant overrides, recovered@0.9 at least). Measured on this set at these settings (one seed, 2026-12-01,
# train_cfg(compose_cfg(DATA + RECIPE + overrides)) as the test runs it, gradient clipping on): relu+l1 9e-2 0.980
# (L0 15.7, FVU 0.45), relu+l1_decoder_norm 1e-1 0.941 (L0 14.1, FVU 0.49; 0.746 before clipping), gated 2e-1
# 0.938 (L0 3.3, FVU 0.40), topk 0.957 (FVU 0.16), scsae 0.980 (L0 6.0, FVU 0.37); jumprelu and batchtopk
# below. With the first release's init relu+l1 recovered 0.05 of issue 8's set 1. The bars are
# the issue's: 0.9 for relu with either penalty and topk, 0.8 for the rest.
CASES = {
    "relu+l1": (["model=relu", "loss=l1", "loss.l1=9e-2"], 0.9),
    "relu+l1_decoder_norm": (["model=relu", "loss=l1_decoder_norm", "loss.l1=1e-1"], 0.9),
    "gated": (["model=gated", "loss.l1=2e-1"], 0.8),
    "topk": (["model=topk", "model.k=8"], 0.9),
    "scsae": (["model=scsae", "loss.l1=6e-2"], 0.8),
}
# JumpReLU and BatchTopK lose many latents early and recover too few of the features at this budget; SAELens
# 6.54.12's own trainers (bench/quality/saelens_train.py, this data written to a file, same batch and schedule,
# scored by saeexp's metrics) end the same way, so these are the methods on this data, not port defects
# (docs/training-quality.md). JumpReLU `loss.l0=1e-1` / `3e-2`: L0 4.0 / 6.6, FVU 0.356 / 0.251, 214 / 235 of 512
# latents dead, recovered 0.605 / 0.359; SAELens' JumpReLU at the same coefficients (3.2 / 1 on its summed loss):
# L0 2.8 / 6.1, FVU 0.403 / 0.256, 202 / 234 dead, recovered 0.711 / 0.395. `model.pre_act=1e-2` keeps latents
# alive but not on the features (20 dead, 73 dense, recovered 0.28). BatchTopK k=8: 366 dead, 47 dense, recovered
# 0.035 (with its 5-batch AuxK window since 4b84b07: 438 dead, 49 dense, 0.035);
# SAELens' BatchTopK: 421 dead, 47 dense, recovered 0.035.
GAPS = {
    "jumprelu": (["model=jumprelu", "loss.l0=1e-1"], 0.8),
    "batchtopk": (["model=batchtopk", "model.k=8"], 0.8),
}
ALL = {**CASES, **GAPS}


# The gaps run on request only (`SAEEXP_KNOWN_GAPS=1`; with `--runxfail` they print their figures): a non-strict
# expected failure could never fail, and these two cost 1.5 minutes of every `make test`. Asked for, they are strict:
# one that starts passing fails, so the gap is seen to close. bench/quality/bench_quality.py reports both against
# SAELens.
KNOWN_GAPS = os.environ.get("SAEEXP_KNOWN_GAPS") == "1"


@pytest.mark.parametrize("case", [*CASES, *(pytest.param(c, marks=[
    pytest.mark.skipif(not KNOWN_GAPS, reason="a known gap (comment above); SAEEXP_KNOWN_GAPS=1 runs it"),
    pytest.mark.xfail(strict=True, reason="the method on this data: SAELens' own trainer ends the same")])
    for c in GAPS)])
def test_variant_recovers_planted_features(case, tmp_path):
    overrides, at_least = ALL[case]
    result = train_cfg(compose_cfg(DATA + RECIPE + overrides, run_dir=tmp_path / "run"))
    assert result["gt_recovered@0.9"] >= at_least, result
    assert result["fvu"] < 0.6, result       # it reconstructs too ...
    assert 1 <= result["l0"] <= 64, result  # ... sparsely


def test_synthetic_defaults_are_realistic():
    """`data=synthetic` at its defaults: several active features per token, almost no all-zero tokens."""
    from hydra.utils import instantiate

    src = instantiate(compose_cfg([]).data)
    assert 4 <= src.describe()["expected_l0"] <= 8
    # a token is all zero (noise aside) when no feature and no group fires
    p_zero = float((1 - src.p_N).prod()) * (1 - src.group_p) ** src.groups
    assert p_zero <= 0.05
    x = src.heldout()
    assert (x.norm(dim=1) < 3 * src.noise * src.d_in**0.5).float().mean() <= 0.05  # measured, noise-only tokens


def test_a_run_that_did_not_learn_is_tagged_and_kept_off_frontiers():
    """FVU >= 1 at the end: the run stays FINISHED with a verdict; the report draws it but no frontier holds it."""
    from saeexp.report.frontier import FVU, L0, aggregate, mark_frontiers
    from saeexp.report.verdict import judge

    assert judge({"fvu": 0.2}) is None
    assert judge({"fvu": 6e12}, 64, 1024) == "failed:fvu=6e+12>=1"
    assert judge({"fvu": float("nan")}, 64, 1024) == "failed:fvu_undefined"
    runs = [{"run_id": str(i), "series": "s", "label": "relu", "control": "coefficient", "value": v,
             "metrics": {L0: l0, FVU: fvu}, "failed": failed}
            for i, (v, l0, fvu, failed) in enumerate([("1", 10, 0.3, False), ("2", 5, 0.5, False),
                                                       ("3", 3, 0.01, True)])]
    points = aggregate(runs)
    mark_frontiers(points)
    by_value = {p.value: p for p in points}
    assert by_value["3"].failed and not by_value["3"].frontier.get(FVU)  # would dominate everything if counted
    assert by_value["1"].frontier[FVU] and by_value["2"].frontier[FVU]
