"""A run stopped part-way and resumed ends with the same weights as an uninterrupted run."""
import json

import pytest
import torch
from conftest import SimulatedCrash, compose_cfg, train_cfg
from safetensors.torch import load_file

COMMON = ["model.d_sae=64", "train.tokens=40960", "train.batch_size=512", "train.checkpoint_every=20",
          "train.log_every=10", "train.lr_decay_tokens=20480", "train.sparsity_warmup_tokens=10240",
          "train.lr_warmup_tokens=5120"]


# the target-L0 controller's state (its log factor u) is part of the checkpoint: a resumed run continues it
@pytest.mark.parametrize("extra", [[], ["model=relu", "train.target_l0=16"]], ids=["default", "target_l0"])
def test_resume_matches_uninterrupted(extra, tmp_path):
    COMMON = [*globals()["COMMON"], *extra]
    full = compose_cfg(COMMON, run_dir=tmp_path / "full")
    train_cfg(full)

    cut = compose_cfg(COMMON + ["+callbacks.cut._target_=conftest.InterruptAt", "+callbacks.cut.step=47"],
                      run_dir=tmp_path / "cut")
    with pytest.raises(SimulatedCrash):
        train_cfg(cut)
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 40  # the last periodic checkpoint before the interruption
    run_id = (tmp_path / "cut/mlflow_run_id").read_text()

    resumed = compose_cfg(COMMON, run_dir=tmp_path / "cut")
    train_cfg(resumed)
    assert (tmp_path / "cut/mlflow_run_id").read_text() == run_id  # same MLflow run

    a = load_file(str(tmp_path / "full/sae/sae.safetensors"))
    b = load_file(str(tmp_path / "cut/sae/sae.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ma = json.loads((tmp_path / "full/metrics.json").read_text())
    mb = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert abs(ma["fvu"] - mb["fvu"]) < 1e-5 and ma["l0"] == mb["l0"]
