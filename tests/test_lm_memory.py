"""Training on data=lm keeps resident memory bounded by its buffer, not by the number of tokens: from a cache five
times larger, and streamed for five times more tokens.

Each run is a fresh process: the real cache, reader, stream buffer and trainer, with the model replaced by
tests/lm_fakes.py (a character tokenizer and a fixed function of the tokens). A thread samples the process's
whole resident set (VmRSS: anonymous memory and mapped file pages alike, as `/usr/bin/time` counts it; a memory
map of the cache would grow it by the cache's size) while `train_cfg(cfg)` (plan, then train) runs."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lm_fakes import write_corpus

RUN = textwrap.dedent("""
    import json, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from lightning.pytorch.callbacks import Callback
    from conftest import compose_cfg
    from lm_fakes import FakeLMSource
    from conftest import train_cfg

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    corpus, mode, n, run_dir = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    SPLIT = 100_000  # tokens: the peak until then, and over the whole run
    batch, step = 4096, [0]

    class Steps(Callback):
        def on_train_batch_end(self, trainer, *a):
            step[0] = trainer.global_step

    data = ["data._target_=lm_fakes.FakeLMSource", f"data.corpus=[{corpus}]", "data.d_in=64",
            "data.heldout_tokens=4096", "data.model_eval=false", "data.epochs=8"]
    if mode == "cache":  # n harvested tokens, 500k trained on
        data += [f"data.harvest_tokens={n}", "+data.chunk_tokens=16384", "+data.buffer_chunks=4"]
        tokens = 500_000
    else:  # n tokens streamed through a buffer of 64k
        data += ["data.stream=true", "data.stream_buffer_tokens=65536"]
        tokens = n
    cfg = compose_cfg(["model=relu", "data=lm", *data, "model.d_sae=256", f"train.tokens={tokens}",
                       f"train.batch_size={batch}", "train.log_every=100", "features.enabled=false",
                       "+callbacks.steps._target_=__main__.Steps"], run_dir=run_dir)
    if mode == "cache":  # build outside the measurement
        FakeLMSource(**{k: v for k, v in cfg.data.items() if k != "_target_"}).prepare()
    peak, first, stop = [rss_kb()], [rss_kb()], [False]
    def sample():
        while not stop[0]:
            peak.append(rss_kb())
            if step[0] * batch <= SPLIT:
                first.append(peak[-1])
            time.sleep(0.005)
    t = threading.Thread(target=sample, daemon=True); t.start()
    train_cfg(cfg)
    stop[0] = True; t.join()
    print("RESULT", json.dumps({"peak_kb": max(peak), "first_kb": max(first)}))
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # ~640k tokens of the fake tokenizer: one pass holds the stream's 500k and what its buffer reads ahead
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=4, words_per_file=20_000)


def _peaks_kb(tmp_path: Path, corpus: str, mode: str, n: int) -> dict:
    tests = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", RUN, tests, corpus, mode, str(n), str(tmp_path / f"{mode}{n}")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line.split(" ", 1)[1])


SMALL, LARGE = 100_000, 500_000  # 26 MB and 128 MB of activations at d_in 64
EXTRA_KB = (LARGE - SMALL) * 64 * 4 // 1024  # ~100 MB: what holding the difference in memory would add


def test_cache_five_times_larger_does_not_raise_resident_memory(tmp_path, corpus):
    small = _peaks_kb(tmp_path, corpus, "cache", SMALL)["peak_kb"]
    large = _peaks_kb(tmp_path, corpus, "cache", LARGE)["peak_kb"]
    print(f"cache: peak RSS {small / 1024:.0f} MiB ({SMALL:,} tokens), {large / 1024:.0f} MiB ({LARGE:,})")
    # a copy of the cache, or its pages mapped into the process, would add ~100 MB; allow a fifth of that
    assert large - small < EXTRA_KB // 5, (small, large)


def test_streaming_five_times_more_tokens_does_not_raise_resident_memory(tmp_path, corpus):
    # one run of 500k streamed tokens: its peak over the first 100k against its peak over all of them (a stream
    # holds no token it has not harvested, so growth with the tokens is growth after the first 100k)
    p = _peaks_kb(tmp_path, corpus, "stream", LARGE)
    print(f"stream: peak RSS {p['first_kb'] / 1024:.0f} MiB (first {SMALL:,} tokens), {p['peak_kb'] / 1024:.0f} "
          f"MiB ({LARGE:,})")
    assert p["peak_kb"] - p["first_kb"] < EXTRA_KB // 5, p
