"""`saeexp-features RUN [--out FILE]`: the feature dashboard of a finished `data=lm` run."""
from __future__ import annotations

import argparse
from pathlib import Path

from saeexp.build.saved import plan_features
from saeexp.cli.common import argparse_errors
from saeexp.jobs.features import features_for_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="saeexp-features", description="feature dashboard of a data=lm run")
    p.add_argument("run", help="a run directory")
    p.add_argument("--out", default=None, help="the HTML file (default RUN/features.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dashboard")
    args = p.parse_args(argv)
    run = Path(args.run)
    argparse_errors(lambda: features_for_run(run, plan_features(run), Path(args.out) if args.out else None,
                                             args.overwrite))
