"""What data-parallel training costs against one process: the `saeexp` command, one process and `trainer=ddp`.

    python bench/speed/bench_ddp.py                        # 2 ranks on this host's CPU (gloo)
    python bench/speed/bench_ddp.py --devices 4 --tokens 204800 819200

Each arm runs the same synthetic run at two token counts in fresh processes (so a run directory, MLflow run,
scoring and saving each time); the wall time's slope over the tokens is the training cost per token and its
intercept what a launch costs before and after training (imports, MLflow, rank start-up, scoring). Lightning
gives each CPU rank cores / ranks threads; one process gets them all. On a GPU host add
`--trainer-args trainer.accelerator=gpu trainer.precision=bf16-mixed`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wall(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "SAEEXP_RUNS": f"{work}/runs", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        # the console script: Lightning re-runs sys.argv for each further rank, so it must name a real file
        cmd = [shutil.which("saeexp") or "saeexp", *args]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"bench_ddp: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--tokens", type=int, nargs=2, default=[102_400, 409_600])
    p.add_argument("--run-args", nargs="*", default=["model=relu", "data.d_in=128", "model.d_sae=2048",
                                                     "train.batch_size=2048", "data.heldout_tokens=4096"])
    p.add_argument("--trainer-args", nargs="*", default=[])
    a = p.parse_args()
    arms = {"one process": [], f"ddp x{a.devices}": ["trainer=ddp", f"trainer.devices={a.devices}"]}
    print(f"{' '.join(a.run_args)}; tokens {a.tokens[0]:,} and {a.tokens[1]:,}; {os.cpu_count()} CPUs")
    print(f"{'arm':<12} {'wall small':>11} {'wall large':>11} {'train tok/s':>12} {'launch s':>9}")
    for name, extra in arms.items():
        t = [wall([*a.run_args, *a.trainer_args, *extra, f"train.tokens={n}"]) for n in a.tokens]
        per_token = (t[1] - t[0]) / (a.tokens[1] - a.tokens[0])
        launch = t[0] - per_token * a.tokens[0]
        print(f"{name:<12} {t[0]:>10.1f}s {t[1]:>10.1f}s {1 / per_token:>12,.0f} {launch:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
