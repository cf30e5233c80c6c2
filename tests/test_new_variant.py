"""A new variant is one .py and one YAML: written to a temporary folder (a user's `--config-dir` and a module on
PYTHONPATH), it composes, satisfies the contract, trains through the CLI, is saved, loads through the allow-list
built from the config dirs in use (and only through it), and is benchmarked, without touching another file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
VARIANT = '''
"""A throwaway variant: ReLU after a fixed shift of the pre-activations (f = ReLU(pre - shift))."""
import torch

from saeexp.sae.base import SAE


class ShiftedReLUSAE(SAE):
    def __init__(self, d_in, d_sae, shift=0.05, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.shift = float(shift)

    def activation(self, pre_BF):
        return torch.relu(pre_BF - self.shift)
'''
YAML = '''
# the throwaway variant: its default penalty, like every model YAML
defaults:
  - override /loss@_global_.loss: l1
_target_: throwaway_sae.ShiftedReLUSAE
d_in: ${data.d_in}
d_sae: ${times:${data.d_in},16}
decoder_norm: auto
init_dec_norm: null
enc_from_dec: true
shift: 0.05
seed: ${seed}
'''
TINY = ["data.d_in=16", "data.n_features=48", "data.groups=8", "model.d_sae=64", "train.tokens=20480",
        "train.batch_size=512", "train.init_sample_tokens=2048", "data.heldout_tokens=1024", "features.enabled=false"]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "throwaway_sae.py").write_text(VARIANT)
    (tmp_path / "conf" / "model" / "shifted.yaml").write_text(textwrap.dedent(YAML).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_new_variant_is_one_py_and_one_yaml(user_dir, tmp_path, one_thread):
    from test_contract import check_contract

    import saeexp

    conf = user_dir / "conf"
    cfg = compose_cfg(["model=shifted", f"hydra.searchpath=[file://{conf}]", *TINY])
    from saeexp.build.plan import plan_run

    check_contract(plan_run(cfg).sae)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(["saeexp", "--config-dir", str(conf), "model=shifted", "name=newvar", *TINY],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (sae_dir,) = (tmp_path / "runs" / "newvar").glob("*/sae")
    loaded = saeexp.load_sae(sae_dir, config_dirs=[conf])
    assert type(loaded).__name__ == "ShiftedReLUSAE" and loaded.shift == 0.05
    x = torch.randn(32, 16)
    pre = loaded.encode_pre(x)
    torch.testing.assert_close(loaded.encode(x), torch.relu(pre - 0.05))
    # the allow-list: with no config dir declaring it in use (no Hydra command running), the variant is refused
    from hydra.core.hydra_config import HydraConfig

    from saeexp.errors import ConfigError

    HydraConfig.instance().cfg = None
    with pytest.raises(ConfigError, match="shifted"):
        saeexp.load_sae(sae_dir)
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "speed" / "bench_variants.py"),
                            "--config-dir", str(conf), "--variants", "shifted", "--widths", "128", "--d-in", "16",
                            "--batch", "256", "--repeats", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert any(line.split()[:2] == ["shifted", "128"] for line in bench.stdout.splitlines()), bench.stdout
