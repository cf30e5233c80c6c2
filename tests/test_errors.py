"""Bad input gets a clear one-line error naming the bad value, and a non-zero exit."""
import os

import torch
from test_cli import SMALL, run


def _one_line_error(p, *needles):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("saeexp: error:"), p.stderr[-2000:]
    for n in needles:
        assert n in last, last


def test_unknown_group_option(tmp_path):
    p = run(["saeexp", "model=nope"], tmp_path, check=False)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "nope" in out and "Available options in 'model'" in out and "relu" in out


# bad values, missing or malformed data files: the table in test_bad_inputs.py (in-process, same CLI path)


def test_nan_stops_names_step_and_keeps_last_good_checkpoint(tmp_path):
    p = run(["saeexp", *SMALL, "name=diverge", "train.log_every=5", "train.checkpoint_every=10",
             "+callbacks.p._target_=conftest.PoisonAt", "+callbacks.p.step=23"], tmp_path, check=False)
    _one_line_error(p, "not finite at step 23")
    ckpts = list((tmp_path / "runs").glob("**/last.ckpt")) or list(
        __import__("pathlib").Path(os.environ["SAEEXP_RUNS"]).glob("diverge/*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    ck = torch.load(ckpts[0], weights_only=False)
    assert ck["global_step"] == 20  # the last checkpoint before the divergence
    assert all(torch.isfinite(v).all() for k, v in ck["state_dict"].items() if v.is_floating_point())
