"""A user's first commands give a good SAE or say why not (issue 26), run as the user runs them.

The variants whose defaults issue 26 found degenerate (jumprelu, topk, batchtopk) train at their defaults on the
default synthetic data and budget; the project's own headline command (`saeexp model=gated loss.l1=2e-3`) runs
through the CLI at a fifth of the budget, where it is already dense. tests/test_verdict.py holds the whole table's
figures against the rules.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import compose_cfg, train_cfg
from test_cli import run

# (recovered@0.9 at least, overrides). TopK at k 8 recovered 1.000 at seeds 0 and 1 on the default 2M tokens and
# 0.984 / 0.994 on half of them, which the test runs (16 s less). JumpReLU plateaus at the bar at the
# default budget: 0.898 / 0.906 at seeds 0 / 1 for the default 3e-2, 0.85-0.87 at 2.5e-2-5e-2
# (conf/loss/l0.yaml), so its test asks for 0.85, well clear of the 0.002 the old default ended at.
CASES = {"topk": (0.9, ["train.tokens=1_000_000"]), "jumprelu": (0.85, [])}


@pytest.mark.slow
@pytest.mark.parametrize("model", CASES)
def test_a_variant_at_its_defaults_recovers_the_features(model, tmp_path, capsys):
    at_least, overrides = CASES[model]
    result = train_cfg(compose_cfg([f"model={model}", *overrides], run_dir=tmp_path / "run"))
    assert result["gt_recovered@0.9"] >= at_least, result
    assert "learning" not in result, result  # no verdict: not dense, not mostly dead
    if model == "topk":  # its 2 dense latents copy the truth's two most frequent features (13.5%, 9.8% of tokens)
        assert result["dense_unexplained"] == 0, result
    assert "saeexp: warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_batchtopk_at_its_defaults_says_its_latents_died(tmp_path, capsys):
    """BatchTopK leaves most latents dead on this data at any k (SAELens' the same: bench/results/set1-*): the
    run says so and points at TopK instead of ending as a quiet, half-dead SAE."""
    result = train_cfg(compose_cfg(["model=batchtopk"], run_dir=tmp_path / "run"))
    assert result["learning"].startswith("suspect:") and "dead=" in result["learning"], result
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saeexp: warning:")]
    assert "model=topk" in line


@pytest.mark.slow
def test_the_headline_command_warns_once_and_is_tagged(tmp_path):
    """`saeexp model=gated loss.l1=2e-3` (the project description's command) is dense on the default data: it
    still exits 0 with its SAE saved, prints one warning saying to raise the coefficient, and MLflow holds the tag."""
    p = run(["saeexp", "model=gated", "loss.l1=2e-3", "train.tokens=409600", "name=headline"], tmp_path)
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("saeexp: warning:")]
    assert len(warnings) == 1 and "raise loss.l1 (now 0.002)" in warnings[0], p.stderr[-2000:]
    (run_dir,) = (Path(os.environ["SAEEXP_RUNS"]) / "headline").glob("*__*")
    assert (run_dir / "sae").is_dir()

    from mlflow.tracking import MlflowClient

    r = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert r.info.status == "FINISHED"
    tag = r.data.tags["saeexp.learning"]
    assert tag.startswith("suspect:") and "l0=" in tag and "dense=" in tag, tag
