"""On a planted dictionary a standard SAE recovers the true features (through the real training path)."""
from conftest import compose_cfg
from saeexp.train.run import train


def test_standard_sae_recovers_planted_features(tmp_path):
    # d_in 32, 128 rarely-firing features (p_i = 0.05 (i+1)^-0.5: about one active feature per token)
    cfg = compose_cfg(["data.d_in=32", "data.n_features=128", "model.d_sae=256", "loss.l1=0.1",
                       "optimizer.lr=3e-3", "train.tokens=150000", "train.batch_size=1024"],
                      run_dir=tmp_path / "run")
    result = train(cfg)
    assert result["gt_recovered@0.9"] >= 0.9, result
    assert result["gt_mmcs"] > 0.9
