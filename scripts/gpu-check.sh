#!/usr/bin/env bash
# The prepared GPU check (budget: 8 minutes; not yet run on a GPU, as no device was lent): what CPU CI cannot
# show. Run it where the project's dependencies are already installed (a lent device machine reaches no index):
#   bash scripts/gpu-check.sh                                 # trainer=gpu (bf16 mixed), 2M tokens per variant
#   TRAINER=cpu TOKENS=40960 BENCH_ARGS="--variants relu" bash scripts/gpu-check.sh   # try the script on a CPU
# Each variant trains briefly on synthetic data; a line per variant prints its held-out L0 and FVU, and the check
# fails if a run fails or its metrics are not finite. Then bench_variants (a CPU step bench: the host's figures
# for the record, beside the GPU's).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TRAINER=${TRAINER:-gpu}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SAEEXP_RUNS="$work/runs" SAEEXP_CACHE="$work/cache" MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"

python3 - "$TRAINER" <<'PY'
import sys, torch
if sys.argv[1] == "gpu":
    assert torch.cuda.is_available(), "trainer=gpu but torch sees no CUDA device"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY

for model in relu gated jumprelu topk batchtopk scsae; do
  timeout 120 python3 -c 'import sys; from saeexp.cli.train import main; sys.argv[0] = "saeexp"; main()' \
    trainer="$TRAINER" model="$model" train.tokens="${TOKENS:-2000000}" train.batch_size=4096 name=gpu_check \
    > "$work/$model.log" 2>&1 || { echo "FAIL $model"; tail -20 "$work/$model.log"; exit 1; }
  python3 - "$model" "$SAEEXP_RUNS/gpu_check" <<'PY'
import json, math, sys
from pathlib import Path
model, root = sys.argv[1], Path(sys.argv[2])
(m,) = [json.loads(p.read_text()) for p in root.glob(f"*model-{model}_*/metrics.json")]
ok = all(math.isfinite(m[k]) for k in ("l0", "fvu"))
print(f"{'ok  ' if ok else 'FAIL'} {model:10s} L0 {m['l0']:7.2f}  FVU {m['fvu']:.4f}")
sys.exit(0 if ok else 1)
PY
done
echo "(bench_variants: the CPU step, for the record)"
timeout 240 python3 bench/speed/bench_variants.py --quick ${BENCH_ARGS:-} || echo "bench_variants did not finish in 240 s"
