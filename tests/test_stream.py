"""Streamed activations (`data.stream=true`): the mixing buffer's schedule and bound, resuming after a real kill -9,
and the refusal when the corpus runs out. The model is replaced (tests/lm_fakes.py): the buffer, corpus packing,
checkpoint and trainer are the real ones; tests/test_lm_stream.py runs SmolLM2 itself."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lm_fakes import write_corpus

from saeexp.data.mixing import FillSchedule, MixingBuffer
from saeexp.errors import ConfigError

FILL = 100


def _ids_fill(calls):
    """fill k's row j holds the number k * FILL + j: every served row says where it came from."""
    def fill(k, out):
        calls.append(k)
        out.copy_((k * FILL + torch.arange(FILL, dtype=torch.float32))[:, None].expand_as(out))
    return fill


@pytest.mark.parametrize("fills,batch,overlap", [(4, 64, False), (4, 64, True), (1, 30, False), (3, 250, True)])
def test_buffer_serves_every_row_once_mixes_the_buffer_and_resumes_anywhere(fills, batch, overlap):
    calls = []
    buf = MixingBuffer(_ids_fill(calls), FILL, 2, fills, overlap)
    it = buf.batches(batch, seed=3)
    n = 30
    rows = torch.cat([next(it) for _ in range(n)])[:, 0].long()
    assert rows.unique().numel() == rows.numel()  # no row served twice
    done_round = FillSchedule(FILL, fills).locate(n * batch - 1)[0]
    assert set(range(done_round * FILL)) <= set(rows.tolist())  # fills whose every part is due: served whole
    # the memory bound: fills (+1 harvested ahead), allocated once, whatever was served
    assert buf.store.shape == ((fills + overlap) * FILL, 2) and buf.memory_bytes == buf.store.numel() * 4
    assert max(calls) <= done_round + fills  # never harvests further ahead than the buffer holds
    if fills > 1:  # after round 0, every batch mixes all the fills in the buffer
        fill_of = rows // FILL
        late = fill_of[FillSchedule(FILL, fills).rows(0):][:batch]
        assert late.unique().numel() >= min(fills, 3)
    for start, ahead in ((0, not overlap), (1, overlap), (7, overlap), (23, overlap)):
        # a resumed stream continues exactly where the uninterrupted one is; harvesting ahead in a thread or not
        # changes nothing
        again = MixingBuffer(_ids_fill([]), FILL, 2, fills, ahead)
        it2 = again.batches(batch, seed=3, start=start)
        assert torch.equal(torch.cat([next(it2) for _ in range(n - start)])[:, 0].long(), rows[start * batch:])
        again.close()
    # the input-scale sample is drawn from fill 0, which round 0 then uses without harvesting it again
    calls.clear()
    warm = MixingBuffer(_ids_fill(calls), FILL, 2, fills, overlap)
    warm.sample(50, seed=0)
    it3 = warm.batches(batch, seed=3)
    assert torch.equal(torch.cat([next(it3) for _ in range(n)])[:, 0].long(), rows) and calls.count(0) == 1
    buf.close()
    warm.close()


@pytest.mark.parametrize("fills,n_fills,overlap", [(4, 9, False), (4, 9, True), (4, 2, False), (1, 5, False)])
def test_a_run_of_known_length_harvests_what_it_trains_on_and_no_fill_more(fills, n_fills, overlap):
    calls = []
    buf = MixingBuffer(_ids_fill(calls), FILL, 2, fills, overlap, n_fills=n_fills)
    rows = torch.cat(list(buf.batches(64, seed=1)))[:, 0].long()
    assert sorted(rows.tolist()) == list(range(n_fills * FILL))  # every row of the run's fills, once
    assert sorted(set(calls)) == list(range(n_fills))  # and no fill past them
    for start in sorted({1, 3, (n_fills * FILL - 1) // 64}):  # the last: the run's short last batch
        again = MixingBuffer(_ids_fill([]), FILL, 2, fills, overlap, n_fills=n_fills)
        assert torch.equal(torch.cat(list(again.batches(64, seed=1, start=start)))[:, 0].long(), rows[start * 64:])
        again.close()
    buf.close()


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    # one pass: ~36 training windows of 127 tokens after the 2 held out (the fake tokenizer: a token per character)
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=1, words_per_file=600)


def _stream_cfg(corpus, run_dir, *extra):
    return ["model=relu", "data=lm", "data._target_=lm_fakes.FakeLMSource", "data.d_in=32", f"data.corpus=[{corpus}]",
            "data.stream=true", "data.heldout_tokens=254", "data.stream_buffer_tokens=2048", "data.model_eval=false",
            "model.d_sae=64", "train.tokens=5120", "train.batch_size=128", "train.init_sample_tokens=512",
            "train.log_every=5", "train.checkpoint_every=10", "features.enabled=false", *extra]


def test_corpus_running_out_is_refused_unless_epochs_allow(small_corpus, tmp_path, one_thread):
    from lm_fakes import FakeLMSource

    def source(**kw):
        src = FakeLMSource(d_in=32, corpus=[small_corpus], cache_dir=str(tmp_path), stream=True, heldout_tokens=254,
                           stream_buffer_tokens=2048, **kw)
        src.check_tokens(5120)  # as plan_run() does: a stream learns its corpus's length as it reads
        return src

    it = source().batches(128, seed=0)
    with pytest.raises(ConfigError, match=r"data.corpus gives [\d,]+ training tokens per pass .*train.tokens=5,120"
                                          r".*data.epochs=2"):
        for _ in range(40):
            next(it)
    it = source(epochs=2).batches(128, seed=0)
    assert sum(next(it).shape[0] for _ in range(40)) == 5120
    assert not (tmp_path / "activations").exists()  # a stream writes no cache


# the same run in a real process: `kill` blocks after step 35 (its last checkpoint: step 30) until killed;
# `finish` resumes it, then trains it uninterrupted in another directory (harvesting in the training thread, which
# must not change what is trained on)
RUN = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import Callback
    from safetensors.torch import load_file
    from conftest import compose_cfg
    from test_stream import _stream_cfg
    from conftest import train_cfg
    corpus, root, mode = sys.argv[2], sys.argv[3], sys.argv[4]
    cfg = lambda name, *extra: compose_cfg(_stream_cfg(corpus, name, "data.epochs=2", *extra), run_dir=f"{root}/{name}")
    if mode == "kill":
        import conftest
        class Stop(Callback):
            def on_train_batch_end(self, trainer, *a):
                if trainer.global_step == 35:
                    open(f"{root}/stopped", "w").close()
                    time.sleep(600)
        conftest.Stop = Stop
        train_cfg(cfg("cut", "data.stream_overlap=true", "+callbacks.stop._target_=conftest.Stop"))
    else:
        out = {"resumed": train_cfg(cfg("cut", "data.stream_overlap=true")), "full": train_cfg(cfg("full"))}
        w = {k: load_file(f"{root}/{k}/sae/sae.safetensors") for k in ("cut", "full")}
        out["equal"] = all(torch.equal(w["cut"][n], w["full"][n]) for n in w["full"])
        print("RESULT", json.dumps(out))
""")


def test_kill_9_then_the_same_command_resumes_and_equals_an_uninterrupted_run(small_corpus, tmp_path):
    tests = str(Path(__file__).resolve().parent)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", RUN, tests, small_corpus, str(tmp_path), "kill"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "stopped").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "stopped").exists(), p.communicate()[1][-3000:] if p.poll() is not None else "timeout"
    p.send_signal(signal.SIGKILL)
    p.wait()
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30
    src = ckpt["ActivationDataModule"]["source"]  # the data module's state_dict
    assert src["fill"] == 4 and set(src["position"]) == {"piece", "offset"}  # where the oldest fill began
    out = subprocess.run([sys.executable, "-c", RUN, tests, small_corpus, str(tmp_path), "finish"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1].split(" ", 1)[1])
    assert res["resumed"]["steps"] == 40
    assert res["equal"], "the resumed run's weights differ from the uninterrupted run's"
    assert res["resumed"]["fvu"] == res["full"]["fvu"] and res["resumed"]["l0"] == res["full"]["l0"]
    assert not (tmp_path / "cache" / "activations").exists()
