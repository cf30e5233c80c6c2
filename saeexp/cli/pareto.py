"""`saeexp-pareto EXPERIMENT`: reconcile with SLURM, then each series' Pareto frontier as a table, PNG and HTML,
logged to the experiment's `pareto` MLflow run."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from saeexp.cli.common import argparse_errors
from saeexp.jobs.pareto import report
from saeexp.tracking.store import default_tracking_uri
from saeexp.util.redact import redact_text
from saeexp.util.safepath import path_part


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="saeexp-pareto", description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="MLflow experiment (the sweep's `name=`)")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else runs/mlflow.db")
    ap.add_argument("--out", default=None, help="where to write pareto.{png,html,json,txt} (default: runs/<exp>/)")
    ap.add_argument("--no-reconcile", action="store_true", help="do not match open runs against sacct")
    ap.add_argument("--no-log", action="store_true", help="do not log the plots to MLflow")
    a = ap.parse_args(argv)
    uri = a.tracking_uri or default_tracking_uri()

    def run() -> dict:
        if not a.out:  # the experiment name becomes a directory under the runs root: one plain name only
            path_part("experiment", a.experiment)
        out = Path(a.out) if a.out else Path(os.environ.get("SAEEXP_RUNS") or "runs") / a.experiment
        return report(a.experiment, uri, out, do_reconcile=not a.no_reconcile, log=not a.no_log)

    r = argparse_errors(run)
    for run_id, reason in r["marked_failed"]:
        print(f"marked FAILED: run {run_id}: {reason}")
    print(f"experiment {a.experiment!r} at {redact_text(uri)}: runs by status {r['status_counts']}")
    print(r["table"])
    if r["matched"]:
        print("\n" + r["matched"])
    if "png" in r:
        print(f"plots: {r['png']}  {r['html']}" + (f"  (logged to MLflow run {r['pareto_run_id']})"
                                                    if "pareto_run_id" in r else ""))
    else:
        print("no finished runs with final/l0 and final/fvu yet", file=sys.stderr)
