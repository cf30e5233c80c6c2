"""saeexp-pareto: frontiers that match a hand computation, seeds pooled with error bars, plots logged to MLflow,
on the default SQLite store and on a real `mlflow server` that many processes write to at once."""
from __future__ import annotations

import math
import multiprocessing as mp
import os

import pytest

from saeexp.report.frontier import CE, FVU, L0, aggregate, mark_frontiers, pareto_mask

# (variant, coefficient, width, seed) -> (L0, FVU, CE recovered); hand-computed frontiers below
POINTS = {
    ("relu", "0.01", "64", 0): (10.0, 0.50, 0.80), ("relu", "0.01", "64", 1): (12.0, 0.54, 0.82),
    ("relu", "0.003", "64", 0): (20.0, 0.30, 0.90), ("relu", "0.003", "64", 1): (20.0, 0.30, 0.90),
    ("relu", "0.001", "64", 0): (30.0, 0.35, 0.95), ("relu", "0.001", "64", 1): (30.0, 0.35, 0.95),
    ("relu", "0.001", "128", 0): (40.0, 0.10, 0.94), ("relu", "0.001", "128", 1): (40.0, 0.10, 0.94),
    ("gated", "0.01", "64", 0): (5.0, 0.90, 0.50), ("gated", "0.003", "64", 0): (5.0, 0.80, 0.40),
}
# A series per (variant, width): widths are not pooled. Series labels name what differs within a variant.
LABEL = {("relu", "64"): "relu d_sae=64", ("relu", "128"): "relu d_sae=128", ("gated", "64"): "gated"}
# L0-FVU: relu-64 (11, .52), (20, .30) on it; (30, .35) is beaten by (20, .30). relu-128: its one point.
# gated: (5, .80) only. L0-CE (higher better): relu-64 (11, .81), (20, .90), (30, .95); relu-128 its one point.
FRONT_FVU = {("relu", "0.01", "64"), ("relu", "0.003", "64"), ("relu", "0.001", "128"), ("gated", "0.003", "64")}
FRONT_CE = {("relu", "0.01", "64"), ("relu", "0.003", "64"), ("relu", "0.001", "64"), ("relu", "0.001", "128"),
            ("gated", "0.01", "64")}


def test_pareto_mask_by_hand():
    assert pareto_mask([1, 2, 3, 4], [4, 3, 3.5, 1]) == [True, True, False, True]
    assert pareto_mask([1, 1], [2, 2]) == [True, True]  # equal points beat neither
    assert pareto_mask([1, 2], [0.5, 0.9], higher_is_better=True) == [True, True]
    assert pareto_mask([1, 2], [0.9, 0.5], higher_is_better=True) == [True, False]


def _runs():
    return [{"run_id": f"r{i}", "series": f"{v}-{w}", "label": LABEL[(v, w)], "control": "coefficient", "value": c,
             "metrics": {L0: l0, FVU: fvu, CE: ce}} for i, ((v, c, w, s), (l0, fvu, ce)) in enumerate(POINTS.items())]


def _check(points):
    key = {label: vw for vw, label in LABEL.items()}
    cells = {(key[p.label][0], p.value, key[p.label][1]): p for p in points}
    assert all(p.control == "coefficient" for p in points)
    assert len(cells) == 6
    assert {k for k, p in cells.items() if p.frontier[FVU]} == FRONT_FVU
    assert {k for k, p in cells.items() if p.frontier[CE]} == FRONT_CE
    two_seeds = cells[("relu", "0.01", "64")]
    assert two_seeds.n == 2 and two_seeds.mean[L0] == pytest.approx(11.0)
    assert two_seeds.sd[L0] == pytest.approx(math.sqrt(2)) and two_seeds.sd[FVU] == pytest.approx(0.02 * math.sqrt(2))


def test_frontier_pools_seeds_and_matches_hand_computation():
    points = aggregate(_runs())
    mark_frontiers(points)
    _check(points)


_CLIENTS: dict = {}


def _log_run(uri: str, experiment: str, key: tuple, values: tuple) -> str:
    """One training-like run: tags as train sets them, a few step metrics, final metrics (runs in a subprocess)."""
    from mlflow.tracking import MlflowClient

    if uri not in _CLIENTS:  # one client per store: opening a SQLite store checks its schema each time
        _CLIENTS[uri] = MlflowClient(uri)
    client = _CLIENTS[uri]
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else _create(client, experiment)
    v, c, w, s = key
    run = client.create_run(exp_id, tags={"sweep": experiment, "variant": v, "coefficient": c, "width": w,
                                          "seed": str(s), "git_commit": "test"})
    rid = run.info.run_id
    client.log_param(rid, "model.d_sae", w)
    for step in range(5):
        client.log_metric(rid, "train/loss", 1.0 / (step + 1), step=step)
    for name, val in zip((L0, FVU, CE), values):
        client.log_metric(rid, name, val)
    client.set_terminated(rid, "FINISHED")
    return rid


def _create(client, experiment):
    from mlflow.exceptions import MlflowException

    from saeexp.tracking.store import artifact_location

    try:
        return client.create_experiment(experiment, artifact_location=artifact_location(client.tracking_uri))
    except MlflowException:  # another writer created it first
        return client.get_experiment_by_name(experiment).experiment_id


def _report_and_check(uri, experiment, tmp_path):
    from mlflow.tracking import MlflowClient

    from saeexp.jobs.pareto import report

    r = report(experiment, uri, tmp_path / "out", do_reconcile=False)
    assert r["status_counts"] == {"FINISHED": len(POINTS)}
    from saeexp.report.frontier import Point

    _check([Point(p["series"], p["label"], p["control"], p["value"], p["mean"], p["sd"], p["seeds"], p["run_ids"],
                  p["frontier"]) for p in r["points"]])
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    html = (tmp_path / "out" / "pareto.html").read_text()
    assert "<svg" in html and "gated" in html and "relu" in html
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(r["pareto_run_id"])}
    assert {"pareto.png", "pareto.html", "pareto.json", "pareto.txt"} <= logged
    # a second report updates the same pareto run, and never counts it as a training run
    again = report(experiment, uri, tmp_path / "out2", do_reconcile=False)
    assert again["pareto_run_id"] == r["pareto_run_id"] and again["status_counts"] == r["status_counts"]
    return r


def test_report_on_the_default_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for key, values in POINTS.items():
        _log_run(uri, "local_sweep", key, values)
    r = _report_and_check(uri, "local_sweep", tmp_path)
    assert "relu" in r["table"] and "±" in r["table"]


def test_cli_prints_the_table(tmp_path, capsys, monkeypatch):
    from saeexp.cli.pareto import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for key, values in list(POINTS.items())[:4]:
        _log_run(uri, "cli_sweep", key, values)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    main(["cli_sweep", "--out", str(tmp_path / "out"), "--no-reconcile"])
    out = capsys.readouterr().out
    assert "runs by status {'FINISHED': 4}" in out and "11.00 ± 1.41" in out and "pareto.html" in out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from services import mlflow_server

    port = int(os.environ.get("SAEEXP_TEST_MLFLOW_PORT_PARETO", "5927"))
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), port) as uri:
        yield uri


@pytest.mark.slow
def test_concurrent_writers_to_a_server_lose_nothing_and_the_report_reads_them_back(server, tmp_path):
    from mlflow.tracking import MlflowClient

    # every run from its own process, all at once, as the jobs of an array would
    with mp.get_context("spawn").Pool(len(POINTS)) as pool:
        ids = pool.starmap(_log_run, [(server, "server_sweep", k, v) for k, v in POINTS.items()], chunksize=1)
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("server_sweep")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    assert set(ids) == set(runs) and len(ids) == len(POINTS)
    for r in runs.values():
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 5
        assert {L0, FVU, CE} <= set(r.data.metrics)
    _report_and_check(server, "server_sweep", tmp_path)


def test_a_run_whose_local_process_was_killed_is_marked_failed_not_left_running(tmp_path):
    """A real process holds the run directory's lock and is SIGKILLed, its MLflow run still RUNNING (it could not
    say so itself); the report marks it FAILED, and leaves alone a run whose holder still lives."""
    import signal
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from saeexp.jobs.pareto import report
    from saeexp.tracking.store import RUN_DIR_TAG

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("killed")
    holders, run_ids = [], []
    for name in ("killed", "alive"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        holders.append(subprocess.Popen(
            [sys.executable, "-c", "import time\nfrom saeexp.train.lock import RunLock\n"
             f"RunLock({str(run_dir)!r}).__enter__()\nprint('held', flush=True)\ntime.sleep(600)"],
            stdout=subprocess.PIPE, text=True))
        run_ids.append(client.create_run(exp, tags={RUN_DIR_TAG: str(run_dir)}).info.run_id)
    try:
        assert all(h.stdout.readline().strip() == "held" for h in holders)
        holders[0].send_signal(signal.SIGKILL)
        holders[0].wait()
        r = report("killed", uri, tmp_path / "report", log=False)
    finally:
        for h in holders:
            h.kill()
            h.wait()
    killed, alive = (client.get_run(i) for i in run_ids)
    assert killed.info.status == "FAILED" and "killed from outside" in killed.data.tags["failure_reason"]
    assert alive.info.status == "RUNNING" and [m[0] for m in r["marked_failed"]] == [run_ids[0]]
