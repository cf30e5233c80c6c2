#!/usr/bin/env bash
# The README's main job, from a fresh machine: install the model and corpus (idempotent, scripts/setup-lm.sh),
# then harvest SmolLM2's layer-3 residuals (cached: a second run reuses them), train a standard SAE,
# evaluate L0 / FVU / CE loss recovered, and print where the run is in MLflow (conf/experiment/demo.yaml).
# Extra arguments are Hydra overrides, e.g. `scripts/demo-lm.sh loss.l1=1e-2`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup-lm.sh"
saeexp experiment=demo "$@"
# the yardstick the SAE should beat: a rank-64 PCA reconstruction on the same hook and held-out windows
saeexp-yardstick experiment=demo "$@"
