#!/usr/bin/env bash
# The README's main job (run by `make demo`). Runs and the MLflow store go to ./runs unless SAEEXP_RUNS is set.
set -euo pipefail
exec saeexp "$@"
