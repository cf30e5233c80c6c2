#!/usr/bin/env bash
# The README's test command (run by `make test` and CI): the whole suite, CPU only.
# Tests that need the local SLURM cluster or an MLflow server start them themselves (scripts/slurm-local,
# scripts/mlflow-server.sh) and stop them by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider "$@"
