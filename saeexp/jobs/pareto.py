"""`saeexp-pareto EXPERIMENT`: reconcile with SLURM, then each series' Pareto frontier as a table, PNG and HTML.

The plots are logged to MLflow in a run named `pareto` of the same experiment (tag `saeexp.kind=pareto`), so
everyone who opens the experiment sees the curves. Works on the default SQLite store and on a server URI.
"""
from __future__ import annotations

import json
from pathlib import Path

from saeexp.errors import ConfigError
from saeexp.report import plots
from saeexp.report import series as S
from saeexp.report.frontier import (
    FVU,
    L0,
    aggregate,
    mark_frontiers,
    matched_table,
    table,
)
from saeexp.report.reconcile import OPEN, reconcile
from saeexp.tracking.store import ORPHANED_TAG, RUN_DIR_TAG, sqlite_file
from saeexp.train import lock
from saeexp.util.redact import redact_text

KIND_TAG = "saeexp.kind"


def read_runs(client, experiment_id: str) -> tuple[list[dict], dict[str, int]]:
    """Finished training runs with final L0 and FVU, as aggregate() takes them (each with its series and
    control); and counts by status. Orphaned runs (no run directory points to them any more) are left out."""
    found: list = []
    counts: dict[str, int] = {}
    for r in client.search_runs([experiment_id], max_results=10000):
        if r.data.tags.get(KIND_TAG) == "pareto":
            continue
        counts[r.info.status] = counts.get(r.info.status, 0) + 1
        m = r.data.metrics
        if r.info.status == "FINISHED" and L0 in m and FVU in m:
            found.append(r)
    found = [r for r in _current(found) if ORPHANED_TAG not in r.data.tags]
    info = {}
    runs = []
    for r in found:
        t = r.data.tags
        exclude = [k for k in t.get("series_exclude", "").split(",") if k]
        control = t.get("sparsity_control", "coefficient")
        value = t.get("sparsity_value", t.get("coefficient", "?"))
        if not exclude:  # a run from before series were recorded: its coefficient is its control
            exclude = ["loss.sparsity.coef", "loss.l1", "loss.l0"]
        its = S.items(r.data.params, exclude)
        sid = S.series_id({"variant": t.get("variant", "?"), **its})
        info[sid] = {"variant": t.get("variant", "?"), "choices": json.loads(t.get("saeexp.choices", "{}")),
                     "items": its}
        runs.append({"run_id": r.info.run_id, "series": sid, "control": control, "value": value,
                     "metrics": {k: v for k, v in r.data.metrics.items() if k.startswith("final/")},
                     # finished without learning, or degenerate (saeexp.report.verdict): hollow, off frontiers
                     "failed": t.get("saeexp.learning", "").startswith("failed"),
                     "suspect": t.get("saeexp.learning", "").startswith("suspect")})
    names = S.labels(info)
    for run in runs:
        run["label"] = names[run["series"]]
    return runs, counts


def reconcile_local(client, experiment_id: str) -> list[tuple[str, str]]:
    """Mark FAILED every open run outside SLURM whose process is gone (kill -9, the out-of-memory killer): its
    run directory holds no lock any more, or one naming a process on this host that no longer runs. A holder
    on another host cannot be checked here and is left open (saeexp.train.lock)."""
    mine, marked = lock.me(), []
    for r in client.search_runs([experiment_id], max_results=10000):
        run_dir = r.data.tags.get(RUN_DIR_TAG)
        if r.info.status not in OPEN or r.data.tags.get("slurm_job_id") or not run_dir or not Path(run_dir).is_dir():
            continue
        try:
            holder = json.loads((Path(run_dir) / lock.LOCK_NAME).read_text())
        except FileNotFoundError:  # a live run holds its lock from before its MLflow run opens to its end
            holder = None
        except (OSError, ValueError):
            continue
        if holder is not None and lock.holder_alive(holder, mine):
            continue
        who = f"process {lock.describe(holder)}" if holder else "its process"
        reason = (f"killed from outside: {who} is gone while the run was {r.info.status}; marked by saeexp-pareto "
                  "(the same command resumes from the last checkpoint)")
        client.set_tag(r.info.run_id, "failure_reason", reason)
        client.set_terminated(r.info.run_id, "FAILED")
        marked.append((r.info.run_id, reason))
    return marked


def _current(runs: list) -> list:
    """Of several runs logged for one run directory, the one its `mlflow_run_id` names (else the latest): the
    others were orphaned (overwritten, or written by a second process before runs were locked)."""
    by_dir: dict[str, list] = {}
    for r in runs:
        by_dir.setdefault(r.data.tags.get(RUN_DIR_TAG) or r.info.run_id, []).append(r)
    keep = []
    for d, rs in by_dir.items():
        named = None
        try:
            named = (Path(d) / "mlflow_run_id").read_text().strip()
        except OSError:  # not a readable directory here (another filesystem, or no tag): the latest run
            pass
        if named is not None:
            keep += [r for r in rs if r.info.run_id == named]
        else:
            keep.append(max(rs, key=lambda r: r.info.start_time or 0))
    return keep


def report(experiment: str, tracking_uri: str, out_dir: Path, do_reconcile: bool = True, log: bool = True) -> dict:
    """Everything `saeexp-pareto` does, returned as a dict (for tests and scripts)."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - mlflow is heavy (seconds to import): only code that talks to a store imports it

    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there to find nothing in it
        raise ConfigError(f"experiment {experiment!r}: no MLflow store at {str(db)!r} (expected the runs root of a "
                          "sweep that ran: SAEEXP_RUNS, or MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"experiment {experiment!r}: no such MLflow experiment at {redact_text(tracking_uri)} "
                          "(expected the name= of a sweep that ran)")
    marked = reconcile(client, exp.experiment_id) + reconcile_local(client, exp.experiment_id) if do_reconcile else []
    runs, counts = read_runs(client, exp.experiment_id)
    points = aggregate(runs)
    by_series = mark_frontiers(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"experiment": experiment, "status_counts": counts, "marked_failed": marked, "points": [
        {"series": p.series, "label": p.label, "control": p.control, "value": p.value, "seeds": p.n,
         "mean": p.mean, "sd": p.sd, "frontier": p.frontier, "run_ids": p.run_ids,
         "failed": p.failed, "suspect": p.suspect} for p in points],
        "table": table(points), "matched": matched_table(points)}
    if points:
        title = f"Pareto frontiers: {experiment} ({len(runs)} runs, {len(by_series)} series)"
        result["png"] = str(plots.png(by_series, out_dir / "pareto.png", title))
        result["html"] = str(plots.interactive_html(by_series, out_dir / "pareto.html", title))
    text = {"table", "matched"}
    (out_dir / "pareto.json").write_text(json.dumps({k: v for k, v in result.items() if k not in text}, indent=2))
    matched = f"\n{result['matched']}\n" if result["matched"] else ""
    (out_dir / "pareto.txt").write_text(f"{result['table']}\n{matched}")
    if log and points:
        result["pareto_run_id"] = _log(client, exp.experiment_id, out_dir, points)
    return result


def _log(client, experiment_id: str, out_dir: Path, points) -> str:
    """Log the plots to the experiment's `pareto` run (one per experiment, updated on each report)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'pareto'", max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        experiment_id, run_name="pareto", tags={KIND_TAG: "pareto"}).info.run_id
    for name in ("pareto.png", "pareto.html", "pareto.json", "pareto.txt"):
        if (out_dir / name).exists():
            client.log_artifact(run_id, str(out_dir / name))
    front = sum(1 for p in points if p.frontier.get(FVU))
    client.log_metric(run_id, "frontier_points", front)
    client.set_terminated(run_id, "FINISHED")
    return run_id

