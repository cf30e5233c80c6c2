"""A stand-in for the language model of `data=lm`, for tests of the cache and the stream that need no model:
the real corpus packing, cache, buffer and trainer; a character tokenizer; activations that are a fixed
function of each token and its neighbour (so every window gives its own rows, and equal windows equal rows)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from saeexp.data.lm import LMSource

WORDS = ("sparse autoencoder feature latent residual stream token window model layer dictionary decoder "
         "encoder activation corpus shard buffer resume epoch harvest train").split()


def write_corpus(folder: Path, n_files: int = 4, words_per_file: int = 20_000, seed: int = 0) -> str:
    """Text files of random words (one document per file, cut into pieces by the corpus reader); their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        words = rng.choice(WORDS, words_per_file)
        paras = [" ".join(words[j:j + 60]) for j in range(0, len(words), 60)]
        (folder / f"doc{i}.txt").write_text("\n\n".join(paras))
    return str(folder / "*.txt")


class CharTokenizer:
    """One token per character (ids 3..130), BOS 1, EOS 2: deterministic and instant."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + (ord(c) % 128) for c in t] for t in texts]}


class FakeLMSource(LMSource):
    """LMSource with the model replaced: `delay` seconds per harvested window slows the harvest (kill drills)."""

    def __init__(self, *args, delay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay, self.harvested_windows = delay, 0
        g = torch.Generator().manual_seed(1234)
        self._table = torch.randn(140, self.d_in, generator=g)

    def key(self):
        from saeexp.lm import corpus

        return {"fake": 1, "d_in": self.d_in, "context_size": self.context_size, "bos": self.bos,
                "heldout_tokens": self.heldout_tokens, "dtype": self.cache_dtype, "corpus_seed": self.corpus_seed,
                "corpus": corpus.identity(self.corpus, self.corpus_split, self.corpus_column, None, None)}

    def tokenizer(self):
        return CharTokenizer()

    def harvest_windows(self, windows_WT, writer, desc="harvest", progress=True) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(windows_WT), 16):
            ids = torch.from_numpy(windows_WT[i:i + 16]).long()
            x = self._table[ids] + 0.5 * torch.roll(self._table[ids], 1, dims=1)  # [w, T, d]
            writer.write(x[:, self.first:].reshape(-1, self.d_in))
            self.harvested_windows += len(ids)
            if self.delay:
                time.sleep(self.delay * len(ids))
        return len(windows_WT) * self.per_window / max(time.perf_counter() - t0, 1e-9)
