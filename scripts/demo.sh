#!/usr/bin/env bash
# The README's main job (run by `make demo`): SmolLM2 layer-3 residuals -> standard SAE -> L0 / FVU / CE loss
# recovered (conf/experiment/demo.yaml). Runs and the MLflow store go to ./runs unless SAEEXP_RUNS is set.
set -euo pipefail
exec "$(dirname "$0")/demo-lm.sh" "$@"
