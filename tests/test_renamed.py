"""Keys that moved when the config groups came to own their keys fail with one line naming the new key; the new
keys compose and mean what the old ones did."""
from __future__ import annotations

import pytest
from conftest import compose_cfg
from test_bad_inputs import one_error_line, run_cli

OLD_NEW = [
    (["loss.sparsity.coef=3e-3"], "use loss.l1=3e-3"),
    (["loss.decoder_norm=free"], "use model.decoder_norm=free"),
    (["loss.init_dec_norm=0.5"], "use model.init_dec_norm=0.5"),
    (["ortho=nearest", "loss.extra.ortho.coef=0.2"], "use ortho.coef=0.2"),
    (["ortho=nearest", "+extra_losses.ortho.margin=0.3"], "use ortho.margin=0.3"),
    (["logger.experiment=mine"], "use name=mine"),
    (["experiment=my_sweep"], "name=my_sweep"),
    (["--config-name", "demo"], "use experiment=demo"),
    (["--config-dir", "sweeps", "--config-name", "relu_grid"], "use experiment=relu_grid"),
]


@pytest.mark.parametrize("argv,says", OLD_NEW, ids=[a[-1] for a, _ in OLD_NEW])
def test_an_old_key_fails_with_one_line_naming_the_new_one(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEEXP_RUNS", str(tmp_path))
    code, err = run_cli(["saeexp", *argv], capsys)
    one_error_line(code, err, says)
    assert not any(tmp_path.iterdir())  # refused before Hydra wrote anything


def test_the_new_keys_compose():
    cfg = compose_cfg(["ortho=nearest", "ortho.coef=0.2", "loss.l1=3e-3", "model.decoder_norm=unit", "name=mine"])
    assert (cfg.loss.l1, cfg.ortho.coef, cfg.model.decoder_norm, cfg.name) == (3e-3, 0.2, "unit", "mine")
    assert "sparsity" not in cfg.loss and "extra_losses" not in cfg and "extra" not in cfg.loss
    # "none" is one spelling everywhere: the option `none`, a node with no `_target_`
    none = compose_cfg(["model=topk", "loss=none", "ortho=none", "resampler=none"])
    assert not none.loss.get("_target_") and not none.ortho.get("_target_")
    assert not none.resampler.get("_target_")
