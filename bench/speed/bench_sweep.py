"""What the sweep machinery costs: a 4-job sweep run serially on the local SLURM cluster, against the same four
jobs run one after another directly on this host (`saeexp <overrides>`, no SLURM, no submitit).

    python bench/speed/bench_sweep.py --tokens 2000000        # jobs of about two minutes each on a 2-core box

Both arms log to the same real MLflow server (scripts/mlflow-server.sh), one thread per job (OMP_NUM_THREADS=1),
array parallelism 1. Overhead = sweep wall time / sum of direct wall times - 1 (target: under 10%). The harvest
term is zero here: synthetic data has no activation cache (with data=lm the sweep's single harvest is one
extra `prepare()` either way, on the submitting host or as one SLURM job before the array).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the test suite's service starters
from services import mlflow_server, slurm_cluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--d-sae", type=int, default=256)
    ap.add_argument("--port-base", type=int, default=7017)
    ap.add_argument("--mlflow-port", type=int, default=5997)
    ap.add_argument("--out", default=str(Path(os.environ.get("SAEEXP_CACHE", "~/.cache/saeexp")).expanduser()
                                         / "bench" / "bench_sweep.json"), help="the result's JSON (outside the repository)")
    a = ap.parse_args()
    coefs = ["1e-3", "2e-3", "4e-3", "8e-3"]
    common = ["model=relu", f"model.d_sae={a.d_sae}", f"train.tokens={a.tokens}", "train.batch_size=4096"]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        with slurm_cluster(tmp / "slurm", a.port_base) as slurm_env, \
                mlflow_server(tmp / "mlflow", a.mlflow_port) as uri:
            env = {**os.environ, **slurm_env, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
            direct = []
            for c in coefs:
                t0 = time.perf_counter()
                subprocess.run(["saeexp", "name=bench_direct", f"loss.l1={c}", *common], cwd=tmp, check=True,
                               env={**env, "SAEEXP_RUNS": str(tmp / "direct")}, capture_output=True, timeout=3600)
                direct.append(time.perf_counter() - t0)
                print(f"direct job loss.l1={c}: {direct[-1]:.1f} s", flush=True)
            t0 = time.perf_counter()
            subprocess.run(["saeexp", "-m", "hydra/launcher=slurm_local", "hydra.launcher.array_parallelism=1",
                            "hydra.launcher.cpus_per_task=1", "name=bench_sweep", f"loss.l1={','.join(coefs)}",
                            *common], cwd=tmp, check=True, env={**env, "SAEEXP_RUNS": str(tmp / "sweep")},
                           capture_output=True, timeout=4 * 3600)
            sweep = time.perf_counter() - t0
    overhead = sweep / sum(direct) - 1
    result = {"direct_s": direct, "direct_total_s": sum(direct), "sweep_s": sweep, "overhead": overhead,
              "tokens": a.tokens, "d_sae": a.d_sae, "jobs": len(coefs), "harvest_s": 0.0}
    print(json.dumps(result, indent=2))
    print(f"sweep machinery overhead: {100 * overhead:+.1f}% ({sweep:.0f} s vs {sum(direct):.0f} s for 4 direct jobs)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
