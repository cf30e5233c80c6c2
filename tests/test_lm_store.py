"""The activation cache grows in shards instead of being rebuilt (saeexp/lm/store.py): the real store, corpus
packing and reader, with the model replaced (tests/lm_fakes.py); kills are real SIGKILLs of real processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_fakes import FakeLMSource, write_corpus

from saeexp.errors import ConfigError
from saeexp.lm import store

D = 16
SHARD = 40 * 127 * D * 4  # 40 windows of 127 rows per shard


def _source(corpus, cache, harvest_tokens, **kw):
    return FakeLMSource(d_in=D, corpus=[corpus], cache_dir=str(cache), harvest_tokens=harvest_tokens,
                        heldout_tokens=254, shard_bytes=SHARD, **kw)


def _train_rows(src) -> torch.Tensor:
    read, n = src._array("train")
    out = torch.empty(n, D)
    read(0, n, out)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=3, words_per_file=6000)


def test_entry_grows_from_where_it_stopped(corpus, tmp_path):
    small = _source(corpus, tmp_path / "a", 50 * 127)
    small.prepare()
    assert small.harvested_windows == 2 + 50  # held-out + training windows, each once
    big = _source(corpus, tmp_path / "a", 130 * 127)
    big.prepare()
    assert big.store().folder == small.store().folder  # one entry: the token count is not in the key
    assert big.harvested_windows == 80  # only the windows the entry did not hold yet
    m = json.loads((big.store().folder / "manifest.json").read_text())
    assert [s["windows"] for s in m["shards"]] == [40, 10, 40, 40]  # a later extension starts a new shard
    assert all((big.store().folder / n).stat().st_size <= SHARD + 128 for s in m["shards"] for n in s["files"])
    fresh = _source(corpus, tmp_path / "b", 130 * 127)
    fresh.prepare()
    assert fresh.harvested_windows == 2 + 130
    grown_rows, fresh_rows = _train_rows(big), _train_rows(fresh)
    assert torch.equal(grown_rows, fresh_rows)  # extending gives exactly the entry a single build gives
    assert np.array_equal(big.windows("train"), fresh.windows("train"))
    assert torch.equal(big.heldout(), fresh.heldout())
    # a run asking for fewer tokens reads the prefix, whatever else the entry holds
    again = _source(corpus, tmp_path / "a", 50 * 127)
    again.prepare()
    assert again.harvested_windows == 0 and torch.equal(_train_rows(again), fresh_rows[:50 * 127])


EXTEND = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from lm_fakes import FakeLMSource
    src = FakeLMSource(d_in=16, corpus=[sys.argv[2]], cache_dir=sys.argv[3], harvest_tokens=int(sys.argv[4]),
                       heldout_tokens=254, shard_bytes=40 * 127 * 16 * 4, delay=float(sys.argv[5]))
    src.prepare()
""")


def _extend(corpus, cache, tokens, delay=0.0):
    tests = str(Path(__file__).resolve().parent)
    return subprocess.Popen([sys.executable, "-c", EXTEND, tests, corpus, str(cache), str(tokens), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_extension_leaves_a_valid_entry_and_the_next_run_goes_on(corpus, tmp_path):
    first = _source(corpus, tmp_path, 40 * 127)
    first.prepare()
    folder = first.store().folder
    before = json.loads((folder / "manifest.json").read_text())
    p = _extend(corpus, tmp_path, 130 * 127, delay=0.01)  # ~0.4 s per shard of 40 windows
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until it committed one shard and is writing the next
        m = json.loads((folder / "manifest.json").read_text())
        if len(m["shards"]) >= 2 and list(tmp_path.glob("activations/*.tmp*/*.npy")):
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    m, bad, why = store.check(folder, first.key())
    assert m is not None and bad is None, why  # the entry is whole: what its manifest lists, nothing partial
    assert m["shards"][0] == before["shards"][0] and 2 <= len(m["shards"]) < 4
    assert list(tmp_path.glob("activations/*.tmp*"))  # the shard being written is only in a temp folder
    # a reader asking for what the entry holds reads it as is, without the lock or the model
    reader = _source(corpus, tmp_path, 40 * 127)
    reader.prepare()
    assert reader.harvested_windows == 0
    # the next run sweeps the leftovers and harvests only what is missing
    done = _source(corpus, tmp_path, 130 * 127)
    done.prepare()
    assert done.harvested_windows == 130 - sum(s["windows"] for s in m["shards"])
    assert not list(tmp_path.glob("activations/*.tmp*"))
    fresh = _source(corpus, tmp_path / "fresh", 130 * 127)
    fresh.prepare()
    assert torch.equal(_train_rows(done), _train_rows(fresh))


def test_damaged_shard_is_cut_off_and_harvested_again(corpus, tmp_path):
    src = _source(corpus, tmp_path, 100 * 127)
    src.prepare()
    want = _train_rows(src)
    folder = src.store().folder
    with open(folder / "train-00001.npy", "r+b") as f:  # one flipped byte in the middle shard
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    again = _source(corpus, tmp_path, 100 * 127)
    again.prepare()
    assert again.harvested_windows == 60  # shards 1 and 2 again, shard 0 and the held-out set kept
    assert torch.equal(_train_rows(again), want)


def test_more_tokens_than_harvested_is_refused_unless_epochs_allow(corpus, tmp_path):
    src = _source(corpus, tmp_path, 10 * 127)
    with pytest.raises(ConfigError, match=r"asks for 4,096 training tokens but data.harvest_tokens=1,270 gives "
                                          r"1,270: raise data.harvest_tokens to 4,096 .*data.stream=true.*"
                                          r"data.epochs=4"):
        src.check_tokens(4096)
    src.check_tokens(1270)
    _source(corpus, tmp_path, 10 * 127, epochs=4).check_tokens(4096)
    # a corpus too short for what is asked: one line, and the entry keeps what was harvested
    with pytest.raises(ConfigError, match=r"data.corpus \(.*doc0.txt.*\) gives only [\d,]+ training windows"):
        _source(corpus, tmp_path, 10 ** 7).prepare()
