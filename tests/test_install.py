"""saeexp installed as a user gets it: an sdist built from this checkout, a wheel built from that sdist, installed
(not editable) into a fresh venv, and every console script run from a directory outside the checkout.

The venv sees the dependencies already installed (`--system-site-packages`), so nothing is downloaded and the
test costs the commands it runs. The editable install of this checkout is on that path too: the test checks
that the venv's own copy of saeexp is the one imported.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the checkout's own state: never copied into the build
SKIP = {".git", "runs", "build", "dist", ".venv", "__pycache__", ".pytest_cache", "mlruns", "outputs", "multirun"}
TINY = ["model=relu", "data.d_in=8", "data.n_features=16", "data.groups=2", "data.heldout_tokens=512",
        "model.d_sae=32", "train.tokens=4096", "train.batch_size=512", "train.init_sample_tokens=512",
        "train.log_every=2"]


def _sh(args, cwd, env=None, timeout=300):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin dir, a directory outside the checkout): saeexp built sdist -> wheel and installed there."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    dist = tmp / "dist"
    _sh([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", dist, src], tmp)
    (sdist,) = dist.glob("saeexp-*.tar.gz")
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, sdist], tmp)
    (wheel,) = dist.glob("saeexp-*.whl")
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp)
    _sh([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"bin": venv / "bin", "cwd": elsewhere, "sdist": sdist, "wheel": wheel, "venv": venv}


def _env(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{installed['bin']}{os.pathsep}{env.get('PATH', '')}", SAEEXP_RUNS=str(tmp_path / "runs"),
               SAEEXP_CACHE=str(tmp_path / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    return env


def test_sdist_and_wheel_carry_the_config_tree(installed):
    want = sorted(str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml"))
    with zipfile.ZipFile(installed["wheel"]) as z:
        in_wheel = sorted(n[len("saeexp/conf/"):] for n in z.namelist() if n.startswith("saeexp/conf/"))
    with tarfile.open(installed["sdist"]) as t:
        in_sdist = sorted(n.split("/saeexp/conf/", 1)[1] for n in t.getnames()
                          if "/saeexp/conf/" in n and n.endswith(".yaml"))
    assert in_wheel == want and in_sdist == want


@pytest.mark.slow
def test_installed_console_scripts_run_outside_the_checkout(installed, tmp_path):
    env, cwd, bin_ = _env(installed, tmp_path), installed["cwd"], installed["bin"]
    where = _sh([bin_ / "python", "-c", "import saeexp, saeexp.configtree as c; print(saeexp.__file__); "
                 "print(c.CONF_DIR)"], cwd, env).stdout.split()
    assert all(Path(w).resolve().is_relative_to(installed["venv"].resolve()) for w in where), where
    assert not any(Path(w).resolve().is_relative_to(ROOT) for w in where), where

    job = _sh([bin_ / "saeexp", "--cfg", "job"], cwd, env).stdout
    assert "_target_: saeexp.sae.GatedSAE" in job and "d_in: 64" in job

    _sh([bin_ / "saeexp", *TINY, "name=installed"], cwd, env)
    (run_dir,) = (tmp_path / "runs" / "installed").glob("*__*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "sae" / "sae.safetensors").exists() and metrics["fvu"] < 1

    out = tmp_path / "eval_out"
    _sh([bin_ / "saeexp-eval", run_dir, "--out", out], cwd, env)
    assert json.loads((out / "eval_metrics.json").read_text())["l0"] == pytest.approx(metrics["l0"])

    # packed: the launcher's hydra_plugins module must be in the wheel for Hydra to find it
    swept = _sh([bin_ / "saeexp", "-m", "hydra/launcher=packed", *TINY, "name=installed_sweep", "loss.l1=1e-2,2e-2"],
                cwd, env)
    assert "2 runs in 1 pack(s) of 2" in swept.stdout, swept.stdout[-2000:]
    done = sorted((tmp_path / "runs" / "installed_sweep").glob("*/metrics.json"))
    assert len(done) == 2, done

    for script in ("saeexp-finetune", "saeexp-pareto", "saeexp-yardstick", "saeexp-export", "saeexp-features"):
        _sh([bin_ / script, "--help"], cwd, env)
    assert not any((cwd / n).exists() for n in ("runs", "mlruns", "outputs", "multirun"))
