#!/usr/bin/env bash
# The prepared GPU check (issue 29; budget 8 minutes on one H100; not yet run on a GPU): bench/gpu_check.py prints
# one table (every variant's step at d_in 2304, widths 16k and 65k, fp32 and bf16: tokens/s, fraction of the
# bf16 dense-matmul peak, peak GPU memory, SAELens' step beside it where its venv exists), then the demo end to
# end. Run it where the project's dependencies are installed (a lent device machine reaches no index):
#   bash scripts/gpu-check.sh            # on the GPU
#   bash scripts/gpu-check.sh --smoke    # tiny sizes on a CPU (what tests/test_gpu_check.py runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SAEEXP_RUNS="$work/runs" MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
timeout 480 python3 bench/gpu_check.py "$@"
