"""Every bad input of issue 11's table, run in-process through the real CLI entry (Hydra, the guard, the error
path): one line `saeexp: error: ...` naming the value, exit 2, no traceback, and nothing left behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

SMALL = ["model.d_sae=64", "train.tokens=40960", "train.batch_size=1024", "train.log_every=10"]


def run_cli(argv: list[str], capsys, entry="train") -> tuple[int, str]:
    """Run a console script in this process (as `saeexp ARGS` would); its exit code and stderr.
    `entry`: the script's module in saeexp.cli by name (`train`, `eval`), or the entry function itself."""
    import importlib
    import logging

    old, sys.argv = sys.argv, list(argv)
    handlers = logging.root.handlers[:]
    try:
        with pytest.raises(SystemExit) as exited:
            (importlib.import_module(f"saeexp.cli.{entry}").main if isinstance(entry, str) else entry)()
    finally:
        sys.argv = old
        # logging handlers made during the call (Hydra's, Lightning's at import) hold this test's captured
        # streams, which close with the test: later tests would log into closed files
        for h in logging.root.handlers[:]:
            if h not in handlers:
                logging.root.removeHandler(h)
                h.close()
        for lg in logging.Logger.manager.loggerDict.values():
            for h in getattr(lg, "handlers", []):
                if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr):
                    h.setStream(sys.__stderr__)
    return exited.value.code, capsys.readouterr().err


def one_error_line(code: int, err: str, *needles: str) -> str:
    """The one `saeexp: error:` line, checked: exit 2, no traceback, last line, naming each needle."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("saeexp: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def nothing_left(tmp_path: Path) -> None:
    """No run directory (nor the runs root) and no MLflow run were created."""
    runs = Path(os.environ["SAEEXP_RUNS"])
    assert not runs.exists() or not any(runs.iterdir()), sorted(str(p) for p in runs.rglob("*"))
    db = tmp_path / "mlflow.db"
    if db.exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not (tmp_path / "escape").exists() and not Path("/abs_escape").exists()


# --- files the rows need --------------------------------------------------------------------------------
def _npy(tmp_path, name, bad=None, dtype=np.float32, d=8):
    a = np.random.default_rng(0).standard_normal((40000, d)).astype(dtype)
    if bad:
        row, value = bad
        a[row, 3] = value
    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    np.save(path, a)
    return path


def _safetensors(tmp_path, name, cut):
    from safetensors.torch import save_file

    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    save_file({"acts": torch.randn(40000, 8)}, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2] if cut == "truncated" else b"\x07\x00garbage" + raw[10:])
    return path


def _file(path):
    return ["data=file", f"data.path={path}", "data.d_in=8"]


def _saved_sae_corrupted(tmp_path):
    from saeexp.io import save_sae
    from saeexp.sae import ReLUSAE

    d = save_sae(ReLUSAE(d_in=8, d_sae=16), tmp_path / "shared" / "sae",
                 {"_target_": "saeexp.sae.ReLUSAE", "d_in": 8, "d_sae": 16}, {"input_scale": 1.0, "data": {}})
    w = d / "sae.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return d


def _read_only_runs(tmp_path, request):
    """The runs root on a read-only tmpfs (as root, where chmod would not stop writes), else mode 0555."""
    ro = tmp_path / "ro_runs"
    ro.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]
                                            ).returncode == 0:
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(ro)]))
    else:
        ro.chmod(0o555)
        request.addfinalizer(lambda: ro.chmod(0o755))
    os.environ["SAEEXP_RUNS"] = str(ro)  # restored by conftest's monkeypatch
    return ro


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (id, argv builder, needles): argv builders get (tmp_path, request) and may create files
ROWS = [
    ("lr_negative", lambda t, r: ["optimizer.lr=-1"], ["optimizer.lr=-1", "> 0"]),
    ("lr_zero", lambda t, r: ["optimizer.lr=0"], ["optimizer.lr=0", "> 0"]),
    ("grad_clip_zero", lambda t, r: ["train.grad_clip=0"], ["train.grad_clip=0", "> 0", "null"]),
    ("l1_zero_relu", lambda t, r: ["model=relu", "loss.l1=0"], ["loss.l1=0", "ReLUSAE"]),
    ("l1_zero_gated", lambda t, r: ["model=gated", "loss.l1=0"], ["loss.l1=0", "GatedSAE"]),
    ("l1_zero_scsae", lambda t, r: ["model=scsae", "loss.l1=0"], ["loss.l1=0", "SCSAE"]),
    ("no_penalty_relu", lambda t, r: ["loss=none"], ["no sparsity penalty"]),
    ("l1_inf", lambda t, r: ["loss.l1=inf"], ["loss.l1=inf", "finite"]),
    ("l0_nan", lambda t, r: ["model=jumprelu", "loss.l0=nan"], ["loss.l0=nan", "finite"]),
    ("l1_negative", lambda t, r: ["loss.l1=-1"], ["loss.l1=-1", ">= 0"]),
    ("seed_text", lambda t, r: ["seed=abc"], ["seed='abc'", "integer"]),
    ("d_sae_zero", lambda t, r: ["model.d_sae=0"], ["model.d_sae=0"]),
    ("tokens_under_a_batch", lambda t, r: ["train.tokens=10"], ["train.tokens=10"]),
    ("l1_on_topk", lambda t, r: ["model=topk", "loss=l1"], ["loss=l1", "TopKSAE"]),
    ("decoder_norm_penalty_on_unit_decoder", lambda t, r: ["loss=l1_decoder_norm", "model.decoder_norm=unit"],
     ["l1_decoder_norm", "decoder_norm=free"]),
    ("data_missing", lambda t, r: _file(t / "nope.npy"), ["nope.npy", "no such file"]),
    ("data_width", lambda t, r: ["data=file", f"data.path={_npy(t, 'a.npy')}", "data.d_in=16"],
     ["width 8", "data.d_in=16"]),
    ("data_dtype", lambda t, r: _file(_npy(t, "f64.npy", dtype=np.float64)), ["float64", "float32 or float16"]),
    ("data_nan", lambda t, r: _file(_npy(t, "nan.npy", (12345, np.nan))), ["nan.npy", "row 12345", "NaN"]),
    ("data_inf", lambda t, r: _file(_npy(t, "inf.npy", (777, np.inf))), ["inf.npy", "row 777", "infinite"]),
    ("safetensors_truncated", lambda t, r: _file(_safetensors(t, "cut.safetensors", "truncated")),
     ["cut.safetensors", "not a readable .safetensors"]),
    ("safetensors_corrupted", lambda t, r: _file(_safetensors(t, "bad.safetensors", "garbage")),
     ["bad.safetensors", "not a readable .safetensors"]),
    ("read_only_runs", lambda t, r: _read_only_runs(t, r) and [], ["ro_runs", "not writable"]),
    ("experiment_dotdot", lambda t, r: ["name=../../escape"], ["name='../../escape'", "plain name"]),
    ("experiment_absolute", lambda t, r: ["name=/abs_escape"], ["name='/abs_escape'", "plain name"]),
    ("experiment_separator", lambda t, r: ["name=a/b"], ["name='a/b'", "plain name"]),
    # k is set from the target: the refusal names the key typed, not model.k
    ("target_l0_above_d_sae", lambda t, r: ["model=topk", "train.target_l0=1000"],
     ["train.target_l0=1000", "model.d_sae=64"]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_line_and_leaves_nothing(row, tmp_path, capsys, request):
    _, argv, needles = row
    code, err = run_cli(["saeexp", *SMALL, *argv(tmp_path, request)], capsys)
    print(one_error_line(code, err, *needles), file=sys.__stdout__)  # the line, for the report (-s)
    nothing_left(tmp_path)


def test_unreachable_tracking_server_is_one_line_within_seconds(tmp_path, capsys, monkeypatch):
    """Checked before anything is written; the URI's credentials are not printed."""
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    code, err = run_cli(["saeexp", *SMALL], capsys)
    assert time.monotonic() - t0 < 10
    line = one_error_line(code, err, "logger.tracking_uri", "http://***@127.0.0.1", "not reachable")
    assert "s3cret" not in err
    print(line, file=sys.__stdout__)
    nothing_left(tmp_path)


def test_eval_of_a_corrupted_sae_names_the_file(tmp_path, capsys):
    d = _saved_sae_corrupted(tmp_path)
    code, err = run_cli(["saeexp-eval", str(d)], capsys, entry="eval")
    print(one_error_line(code, err, str(d / "sae.safetensors"), "not a readable"), file=sys.__stdout__)
    nothing_left(tmp_path)


def test_resampler_on_topk_is_allowed_with_one_warning(compose_config, capsys):
    from saeexp.build.plan import plan_run

    cfg = compose_config(["model=topk", "resampler=anthropic", *SMALL])
    resampler = plan_run(cfg).resampler
    assert resampler is not None
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saeexp: warning:")]
    assert len(warnings) == 1 and "AuxK" in warnings[0] and "resampler=anthropic" in warnings[0], warnings
    print(warnings[0], file=sys.__stdout__)


class FillDiskAt:
    """A Lightning callback that fills the disk after `step` steps: a tmpfs up to ENOSPC, or (`/dev/full`)
    points the next checkpoint's temporary file at /dev/full, which refuses every write with ENOSPC."""

    def __new__(cls, step: int, mode: str):
        from lightning.pytorch.callbacks import Callback

        class _Fill(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step != step:
                    return
                run_dir = Path(trainer.default_root_dir)
                if mode == "/dev/full":
                    # picked up as the checkpoint's temp name by the test's wrapper of saeexp.io.temp_name
                    os.symlink("/dev/full", run_dir / "checkpoints" / "last.ckpt.tmp.full")
                    return
                with open(run_dir.parent / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass

        return _Fill()


def test_disk_full_during_training_is_one_line_keeps_checkpoint_and_fails_the_run(tmp_path, capsys, request,
                                                                                  monkeypatch):
    """A small tmpfs as root (never skipped: /dev/full otherwise); the MLflow store lives elsewhere."""
    runs = tmp_path / "small_disk"
    runs.mkdir()
    mode = "/dev/full"
    if os.geteuid() == 0 and not os.environ.get("SAEEXP_TEST_DEV_FULL") and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(runs)]
                                            ).returncode == 0:
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(runs)]))  # lazy: a log file is open there
        mode = "tmpfs"
    else:  # Lightning writes checkpoints to a temp file and moves them: across filesystems, a copy that
        # follows the /dev/full link the callback plants
        monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
        # temp names are unique per writer (saeexp.io.temp_name): a planted `<name>.tmp.full` link wins
        import saeexp.io

        unique = saeexp.io.temp_name
        monkeypatch.setattr(saeexp.io, "temp_name", lambda path, kind="tmp": (
            path.with_name(path.name + ".tmp.full") if path.with_name(path.name + ".tmp.full").is_symlink()
            else unique(path, kind)))
    os.environ["SAEEXP_RUNS"] = str(runs)
    code, err = run_cli(["saeexp", *SMALL, "name=full", "train.checkpoint_every=10",
                         "+callbacks.fill._target_=test_bad_inputs.FillDiskAt", "+callbacks.fill.step=25",
                         f"+callbacks.fill.mode={mode}"], capsys)
    line = one_error_line(code, err, "No space left on device", "kept the last good checkpoint", "step 30")
    print(f"[{mode}] {line}", file=sys.__stdout__)
    (ckpt,) = runs.glob("full/*/checkpoints/last.ckpt")
    assert not list(ckpt.parent.glob("last.ckpt.tmp*"))  # no partial checkpoint left, whatever its name
    assert torch.load(ckpt, weights_only=True)["global_step"] == 20  # the last good one, whole

    from mlflow.tracking import MlflowClient

    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run((ckpt.parent.parent / "mlflow_run_id").read_text())
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["failure_reason"]


def test_console_script_exits_2_and_writes_nothing(tmp_path):
    """The installed `saeexp` command itself: exit code 2, one line, nothing inside or outside the runs root."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    env = {**os.environ, "SAEEXP_RUNS": str(work / "runs")}
    p = subprocess.run(["saeexp", "name=../../escape"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    one_error_line(p.returncode, p.stderr, "name='../../escape'")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


# --- issue 25: what a command reads is never written to, weights are checked, no credential is shown ------------
# (its other cases need a real process or service: SIGTERM/SIGINT in test_signals.py, the SLURM time limit and a
# password in the tracking URI in test_slurm.py, a kill -9'd run left RUNNING in test_pareto.py)
EVAL_DATA = ["data=synthetic", "data.d_in=8", "data.heldout_tokens=2048"]


def _two_saes_in_one_parent(tmp_path) -> tuple[Path, Path]:
    from saeexp.io import save_sae
    from saeexp.sae import ReLUSAE

    dirs = []
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        dirs.append(save_sae(ReLUSAE(d_in=8, d_sae=16), tmp_path / "downloads" / name,
                             {"_target_": "saeexp.sae.ReLUSAE", "d_in": 8, "d_sae": 16}, {"input_scale": 1.0}))
    return dirs[0], dirs[1]


def test_eval_writes_under_the_runs_root_never_beside_the_sae_and_never_overwrites(tmp_path, capsys):
    from conftest import compose_cfg

    from saeexp.build.saved import plan_saved
    from saeexp.jobs.evaluate import evaluate_saved

    a, b = _two_saes_in_one_parent(tmp_path)
    before = sorted(p.name for p in a.parent.iterdir())
    for d in (a, b):
        evaluate_saved(plan_saved(compose_cfg([f"sae={d}", *EVAL_DATA], config_name="eval")))
    assert sorted(p.name for p in a.parent.iterdir()) == before  # nothing beside the SAEs
    written = [ln.split("written to ")[1] for ln in capsys.readouterr().out.splitlines() if "written to" in ln]
    assert len(set(written)) == 2 and all(Path(w).is_relative_to(Path(os.environ["SAEEXP_RUNS"]) / "eval")
                                          for w in written)
    first = Path(written[0]).read_bytes()
    code, err = run_cli(["saeexp-eval", str(a), *EVAL_DATA], capsys, entry="eval")
    print(one_error_line(code, err, written[0], "overwrite=true"), file=sys.__stdout__)
    assert Path(written[0]).read_bytes() == first  # the refused command changed nothing
    evaluate_saved(plan_saved(compose_cfg([f"sae={a}", *EVAL_DATA, "overwrite=true"], config_name="eval")))


def _nan_in_w_dec(folder: Path, file: str) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / file))
    t["W_dec"][3, 1] = float("nan")
    save_file(t, str(folder / file))


def test_non_finite_or_misshapen_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from saeexp.interop import saelens_write
    from saeexp.sae import ReLUSAE

    a, b = _two_saes_in_one_parent(tmp_path)
    _nan_in_w_dec(a, "sae.safetensors")
    lens = saelens_write.export(ReLUSAE(d_in=8, d_sae=16), tmp_path / "downloads" / "lens")
    _nan_in_w_dec(lens, "sae_weights.safetensors")
    t = load_file(str(b / "sae.safetensors"))
    t["W_enc"] = torch.zeros(8, 17)
    save_file(t, str(b / "sae.safetensors"))
    for folder, needles in ((a, ["W_dec", "non-finite"]), (lens, ["W_dec", "non-finite"]),
                            (b, ["W_enc", "(8, 17)", "(8, 16)"])):
        code, err = run_cli(["saeexp-eval", str(folder), *EVAL_DATA], capsys, entry="eval")
        print(one_error_line(code, err, *needles), file=sys.__stdout__)
    nothing_left(tmp_path)


def test_cfg_job_resolve_shows_no_credential(capsys):
    import importlib

    old, sys.argv = sys.argv, ["saeexp", "--cfg", "job", "--resolve", "logger.tracking_uri=http://alice:s3cret@host:5000"]
    try:
        importlib.import_module("saeexp.cli.train").main()
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    assert "tracking_uri: http://***@host:5000" in out and "s3cret" not in out


def test_pareto_of_an_unknown_experiment_is_one_line(tmp_path, capsys):
    code, err = run_cli(["saeexp-pareto", "no_such_experiment"], capsys, entry="pareto")
    print(one_error_line(code, err, "no_such_experiment"), file=sys.__stdout__)
    assert not (tmp_path / "mlflow.db").exists()  # no empty store created to look in


def test_a_full_disk_names_the_file_it_could_not_write(capsys):
    from saeexp.cli.common import run_task
    from saeexp.lm.harvest import NpyWriter

    def harvest(cfg):  # the cache's writer, its rows going to a device that is always full
        NpyWriter(Path("/dev/full"), 4096, 8, "float32").write(torch.zeros(4096, 8))

    with pytest.raises(SystemExit) as exited:
        run_task(harvest, None)
    print(one_error_line(exited.value.code, capsys.readouterr().err, "cannot write '/dev/full'", "No space left"),
          file=sys.__stdout__)


def test_an_undefined_metric_is_null_not_a_sentinel(tmp_path, compose_config):
    from saeexp.build.plan import plan_run
    from saeexp.report.score import score, write_report

    plan = plan_run(compose_config([*SMALL, "model=relu", "model.d_sae=1"]))
    plan.source.prepare()
    result = write_report(*score(plan.sae, plan.source, 1.0), tmp_path)
    assert result["dec_mmcs"] is None  # no other decoder row to compare with
