"""One sparsity axis for every variant: runs train in-process through train_cfg(cfg), the report reads them back from
MLflow and pools only runs that differ in nothing but the seed."""
from __future__ import annotations

import json

import pytest
from conftest import compose_cfg, train_cfg

from saeexp.report.frontier import FVU, L0

TINY = ["model=relu", "model.d_sae=32", "train.tokens=20480", "train.batch_size=1024", "train.log_every=10",
        "train.init_sample_tokens=2048", "data.heldout_tokens=2048", "name=compare"]
RUNS = {"k4": ["model=topk", "model.k=4"], "k16": ["model=topk", "model.k=16"], "seed0": ["seed=0"],
        "seed1": ["seed=1"], "dec_norm": ["loss=l1_decoder_norm"], "target": ["model=batchtopk", "train.target_l0=8"]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The runs of a small sweep, trained once for the module, in one MLflow store."""
    import torch

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("SAEEXP_RUNS", str(root / "runs"))
        for name, overrides in RUNS.items():
            train_cfg(compose_cfg([*TINY, *overrides], run_dir=root / "runs" / name))
    torch.set_num_threads(threads)
    return root, uri


def _report(sweep):
    from saeexp.jobs.pareto import report

    root, uri = sweep
    r = report("compare", uri, root / "out", do_reconcile=False, log=False)
    return r, {(p["label"], p["control"], p["value"]): p for p in r["points"]}


def test_k_sweep_seed_sweep_and_penalties_are_told_apart(sweep):
    r, points = _report(sweep)
    assert set(points) == {("topk", "k", "4"), ("topk", "k", "16"), ("relu+l1", "coefficient", "0.04"),
                           ("relu+l1_decoder_norm", "coefficient", "0.04"), ("batchtopk", "target_l0", "8")}, r["table"]
    # the k sweep: two points on one topk series, one seed each, at clearly different L0 (TopK: at most k)
    assert points[("topk", "k", "4")]["seeds"] == 1 and points[("topk", "k", "16")]["seeds"] == 1
    assert 2 < points[("topk", "k", "4")]["mean"][L0] <= 4 < 8 < points[("topk", "k", "16")]["mean"][L0] <= 16
    # the seed sweep: one point with error bars over the two seeds
    seeds = points[("relu+l1", "coefficient", "0.04")]
    assert seeds["seeds"] == 2 and seeds["sd"][FVU] > 0 and seeds["sd"][L0] > 0
    # relu with another penalty: another series, labelled by what differs
    assert points[("relu+l1_decoder_norm", "coefficient", "0.04")]["seeds"] == 1
    assert len({p["series"] for p in r["points"]}) == 4
    assert "relu+l1_decoder_norm" in r["table"] and "matched L0" in r["matched"] and "L0 8" in r["matched"]


def test_runs_are_tagged_with_their_sparsity_control(sweep):
    from mlflow.tracking import MlflowClient

    root, uri = sweep
    run = MlflowClient(uri).get_run((root / "runs" / "target" / "mlflow_run_id").read_text())
    tags = run.data.tags
    assert (tags["sparsity_control"], tags["sparsity_value"], tags["variant"]) == ("target_l0", "8", "batchtopk")
    assert tags["coefficient"] == "None" and tags["width"] == "32"  # the existing tags keep their names
    assert "model.k" in tags["series_exclude"].split(",") and json.loads(tags["saeexp.choices"])["model"] == "batchtopk"
    assert 4 < run.data.metrics[L0] <= 12  # the target set k (BatchTopK: k per token on average)
    relu = MlflowClient(uri).get_run((root / "runs" / "seed0" / "mlflow_run_id").read_text()).data
    assert (relu.tags["sparsity_control"], relu.tags["sparsity_value"]) == ("coefficient", "0.04")
    assert relu.metrics["final/sparsity_coef"] == pytest.approx(0.04)


def test_report_ignores_orphaned_runs(sweep, monkeypatch):
    """An overwritten run's old MLflow run, and a second run logged for the same directory, are not counted."""
    from mlflow.tracking import MlflowClient

    root, uri = sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = root / "runs" / "dec_norm"
    old_id = (run_dir / "mlflow_run_id").read_text()
    train_cfg(compose_cfg([*TINY, *RUNS["dec_norm"], "overwrite=true"], run_dir=run_dir))
    new_id = (run_dir / "mlflow_run_id").read_text()
    client = MlflowClient(uri)
    assert old_id != new_id and "saeexp.orphaned" in client.get_run(old_id).data.tags
    # a run for the same directory that no mlflow_run_id names (as a second writer before locks would leave)
    new = client.get_run(new_id)
    stray = client.create_run(new.info.experiment_id, tags=dict(new.data.tags)).info.run_id
    for k, v in new.data.params.items():
        client.log_param(stray, k, v)
    client.log_metric(stray, L0, 1.0)
    client.log_metric(stray, FVU, 0.0)
    client.set_terminated(stray, "FINISHED")
    r, points = _report(sweep)
    assert points[("relu+l1_decoder_norm", "coefficient", "0.04")]["run_ids"] == [new_id]
