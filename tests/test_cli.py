"""The CLI end to end, as a user runs it: training writes an MLflow run and metrics.json; eval rescores it."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["model.d_sae=64", "train.tokens=40960", "train.batch_size=1024", "train.log_every=10"]


def run(args, tmp_path, check=True, extra_env=None):
    # this checkout's saeexp (not whichever the console script was installed from), and conftest
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(extra_env or {})}
    p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.mark.slow
def test_train_logs_mlflow_run_and_eval_rescores(tmp_path):
    p = run(["saeexp", *SMALL, "name=cli_test"], tmp_path)
    # the run directory is named by the overrides (log_every excluded: it does not change the result) and a
    # hash of the resolved config
    (run_dir,) = (Path(os.environ["SAEEXP_RUNS"]) / "cli_test").glob(
        "model.d_sae-64_train.batch_size-1024_train.tokens-40960__*")
    assert "l0=" in p.stdout and "MLflow:" in p.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in ("l0", "mse", "fvu", "l2_ratio", "dead", "dense", "gt_mmcs", "gt_recovered@0.9", "dec_mmcs"):
        assert k in metrics

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["model.d_sae"] == "64" and r.data.params["loss.l1"] == "0.04"
    assert r.data.metrics["final/fvu"] == pytest.approx(metrics["fvu"])
    assert r.data.metrics["final/gt_recovered_at_0.9"] == pytest.approx(metrics["gt_recovered@0.9"])
    assert "loss/recon" in r.data.metrics and "train/l0" in r.data.metrics and "train/dead_frac" in r.data.metrics
    history = client.get_metric_history(run_id, "loss/l1")
    assert len(history) >= 4  # logged every 10 of 40 steps, under its own name
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "final_histograms.png", "metrics.json", "sae"} <= arts
    assert {"sae/sae.safetensors", "sae/config.yaml"} <= {a.path for a in client.list_artifacts(run_id, "sae")}
    # artifacts live next to the store, never in the directory the command ran from
    assert not (tmp_path / "mlruns").exists()
    assert r.info.artifact_uri.startswith(str(Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):]).parent))

    # the same command again finds the finished run instead of training again
    again = run(["saeexp", *SMALL, "name=cli_test"], tmp_path)
    assert "already finished" in again.stdout

    e = run(["saeexp-eval", str(run_dir)], tmp_path)
    # results go under the runs root, named after the SAE, never beside or into what was read; the line says where
    written = Path(e.stdout.split("written to ")[-1].strip())
    assert written.parent.parent == Path(os.environ["SAEEXP_RUNS"]) / "eval" and not (run_dir / "eval_metrics.json").exists()
    ev = json.loads(written.read_text())
    assert ev["fvu"] == pytest.approx(metrics["fvu"], rel=1e-4) and ev["l0"] == pytest.approx(metrics["l0"])
    assert "fvu=" in e.stdout


def test_cfg_job_prints_composed_config(tmp_path):
    p = run(["saeexp", "--cfg", "job", "loss.l1=2e-3"], tmp_path)
    assert "l1: 0.002" in p.stdout and "_target_: saeexp.sae.GatedSAE" in p.stdout  # the default model
