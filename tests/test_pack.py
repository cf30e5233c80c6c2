"""Packed sweeps (`hydra/launcher=packed`): many SAEs on one activation stream, each still its own run.

A packed run equals the same point trained alone, bit for bit (CPU fp32); a kill -9 of the pack and the same
command resume every member; one member that diverges fails alone; the Pareto report reads packed runs; packs
split by stream and by memory; a single run's checkpoint and a member's resume each other.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SimulatedCrash, compose_cfg, train_cfg
from safetensors.torch import load_file

from saeexp.build.plan import plan_run
from saeexp.jobs.pack import group, memory_split, train_pack
from saeexp.jobs.train import train

# 200 steps of d_sae 256 on the default synthetic data (d_in 64): long enough to be killed part-way
COMMON = ["model.d_sae=256", "train.tokens=102400", "train.batch_size=512", "train.checkpoint_every=25",
          "train.log_every=25"]
POINTS = [["model=relu", "loss.l1=3e-3"], ["model=relu", "loss.l1=1e-2"],
          ["model=gated", "loss.l1=3e-3"], ["model=gated", "loss.l1=1e-2"]]


def _same(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "sae/sae.safetensors")), load_file(str(b / "sae/sae.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{b}: {k} differs from the single run's"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for k in ("fvu", "l0", "mse", "dead", "dense", "gt_recovered@0.9"):
        assert ma.get(k) == mb.get(k), (k, ma.get(k), mb.get(k))


def test_a_killed_packed_sweep_resumes_and_each_run_equals_its_single_run(tmp_path, one_thread):
    singles = []
    for i, pt in enumerate(POINTS):
        train_cfg(compose_cfg(COMMON + pt, run_dir=tmp_path / f"single{i}"))
        singles.append(tmp_path / f"single{i}")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "hydra/launcher=packed", "name=pk", "model=relu,gated", "loss.l1=3e-3,1e-2", *COMMON]
    p = subprocess.Popen([sys.executable, "-c", "from saeexp.cli.train import main; main()", *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "runs" / "pk"
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        if len(list(sweep.glob("*/checkpoints/last.ckpt"))) == 4:
            break
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()[1][-3000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    runs = sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(runs) == 4 and not any((d / "metrics.json").exists() for d in runs)  # killed part-way
    ids = {d: (d / "mlflow_run_id").read_text() for d in runs}

    out = subprocess.run([sys.executable, "-c", "from saeexp.cli.train import main; main()", *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("resumed at step") == 4 and "4 runs in 1 pack(s) of 4" in out.stdout
    for d in runs:
        assert (d / "mlflow_run_id").read_text() == ids[d]  # the same MLflow run continues
        point = json.loads((d / "metrics.json").read_text())
        i = POINTS.index([f"model={'gated' if 'model-gated' in d.name else 'relu'}",
                          f"loss.l1={'3e-3' if 'l1-0.003' in d.name else '1e-2'}"])
        _same(singles[i], d)
        assert point["steps"] == 200

    again = subprocess.run([sys.executable, "-c", "from saeexp.cli.train import main; main()", *args], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("run already finished") == 4, again.stderr[-2000:]

    from saeexp.jobs.pareto import report

    r = report("pk", os.environ["MLFLOW_TRACKING_URI"], tmp_path / "report", log=False)
    assert r["status_counts"] == {"FINISHED": 4}  # the report reads packed runs like any others
    assert sorted((p["label"].split()[0], p["value"]) for p in r["points"]) == [
        ("gated", "0.003"), ("gated", "0.01"), ("relu", "0.003"), ("relu", "0.01")]
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000


def test_a_diverging_member_fails_alone_and_the_others_finish(tmp_path, one_thread):
    plans = [plan_run(compose_cfg(COMMON[:1] + ["train.tokens=51200", "train.batch_size=512", "train.log_every=10"]
                                  + pt, run_dir=tmp_path / f"m{i}")) for i, pt in enumerate(POINTS[:3])]
    with torch.no_grad():
        plans[1].sae.W_dec.mul_(float("inf"))  # the loss is not finite from the first step on
    results = train_pack(plans)
    assert isinstance(results[1], Exception) and "not finite at step 0" in str(results[1])
    assert not (tmp_path / "m1/metrics.json").exists()
    for i in (0, 2):
        assert results[i]["steps"] == 100 and (tmp_path / f"m{i}/metrics.json").exists()
    import mlflow

    run = mlflow.get_run((tmp_path / "m1/mlflow_run_id").read_text())
    assert run.info.status == "FAILED" and "not finite" in run.data.tags["failure_reason"]


def test_single_and_member_checkpoints_resume_each_other(tmp_path, one_thread):
    cfg = COMMON[:1] + ["train.tokens=51200", "train.batch_size=512", "train.checkpoint_every=20",
                        "train.log_every=10", "model=relu", "loss.l1=3e-3", "resampler=anthropic",
                        "resampler.at=[0.3,0.6]", "resampler.window_tokens=5120", "resampler.rewarm_steps=10"]
    train_cfg(compose_cfg(cfg, run_dir=tmp_path / "full"))
    # a single run crashed at step 47 (checkpoint: step 40) resumes in a pack beside a fresh run: two packs
    with pytest.raises(SimulatedCrash):
        train_cfg(compose_cfg(cfg + ["+callbacks.cut._target_=conftest.InterruptAt", "+callbacks.cut.step=47"],
                              run_dir=tmp_path / "cut"))
    res = train_pack([plan_run(compose_cfg(cfg, run_dir=tmp_path / "cut")),
                      plan_run(compose_cfg(cfg, run_dir=tmp_path / "fresh"))])
    assert all(r["steps"] == 100 for r in res)
    _same(tmp_path / "full", tmp_path / "cut")
    _same(tmp_path / "full", tmp_path / "fresh")
    # a member's checkpoint, resumed by the `saeexp` command alone (a pack of one)
    from saeexp.cli.train import _task

    for name in ("cut", "fresh"):
        (tmp_path / name / "metrics.json").unlink()
    ck = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)
    assert ck["format"].startswith("saeexp-pack-member") and ck["global_step"] == 100
    _task(compose_cfg(cfg, run_dir=tmp_path / "cut"))
    _same(tmp_path / "full", tmp_path / "cut")


def test_a_streamed_pack_on_the_lm_path_harvests_once_and_equals_single_streamed_runs(tmp_path, one_thread):
    from lm_fakes import FakeLMSource, write_corpus
    from test_stream import _stream_cfg

    corpus = write_corpus(tmp_path / "corpus", n_files=1, words_per_file=600)
    pts = [["loss.l1=3e-3"], ["loss.l1=1e-2"], ["model=gated", "loss.l1=3e-3"], ["model=gated", "loss.l1=1e-2"]]
    harvested = []
    for i, pt in enumerate(pts):
        plan = plan_run(compose_cfg(_stream_cfg(corpus, "x", "data.epochs=2", *pt), run_dir=tmp_path / f"single{i}"))
        train(plan)
        harvested.append(plan.source.harvested_windows)
    plans = [plan_run(compose_cfg(_stream_cfg(corpus, "x", "data.epochs=2", *pt), run_dir=tmp_path / f"pack{i}"))
             for i, pt in enumerate(pts)]
    assert group(plans) == [[0, 1, 2, 3]]
    source = plans[0].source
    assert isinstance(source, FakeLMSource)
    train_pack(plans)
    for i in range(4):
        _same(tmp_path / f"single{i}", tmp_path / f"pack{i}")
    # one stream for the four: the pack harvests what one run harvests
    assert source.harvested_windows == harvested[0] == harvested[1], (source.harvested_windows, harvested)


def test_packs_follow_the_stream_and_the_memory_budget(tmp_path, capsys):
    from saeexp.cli.packed import plan_packs

    pts = [["model=relu", "seed=0"], ["model=gated", "seed=0"], ["model=relu", "seed=1"],
           ["model=relu", "seed=0", "train.batch_size=1024"], ["model=topk", "seed=0", "model.d_sae=4096"]]
    plans = [plan_run(compose_cfg(["train.tokens=409600", *pt], run_dir=tmp_path / str(i))) for i, pt in enumerate(pts)]
    # the seed orders the batches and the batch size shapes them: only 0, 1 and 4 share a stream
    assert group(plans) == [[0, 1, 4], [2], [3]]
    assert memory_split([0, 1, 4], plans, 1e12) == [[0, 1, 4]]
    small = memory_split([0, 1, 4], plans, 1.5 * 2 ** 20 * 4 * 4)
    assert len(small) > 1 and sum(small, []) == [0, 1, 4]
    packs = plan_packs(plans, size=2, memory_gb=None)
    assert sorted(map(sorted, packs)) == [[0, 1], [2], [3], [4]]
    packs = plan_packs(plans, size=0, memory_gb=0.01)
    assert "over the budget of 0.01 GB (hydra.launcher.memory_gb): split into packs of" in capsys.readouterr().out
