"""`saeexp-export RUN_OR_SAE_DIR OUT --format saelens`: a saved SAE in a format other tools load."""
from __future__ import annotations

import argparse

from saeexp.cli.common import argparse_errors
from saeexp.jobs.export import FORMATS, export_saved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="saeexp-export", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("path", help="a run directory, its sae/ directory, or a SAELens folder")
    p.add_argument("out", help="the folder to write (new, or empty)")
    p.add_argument("--format", default="saelens", help=f"one of {FORMATS}")
    args = p.parse_args(argv)
    out = argparse_errors(lambda: export_saved(args.path, args.out, args.format))
    print(f"saeexp-export: {args.path} -> {out} ({args.format}: {', '.join(sorted(p.name for p in out.iterdir()))})")
