"""Training from the activation cache keeps anonymous memory bounded by the buffer, not the cache size.

Each run is a fresh process: the cache is built by a stand-in harvest (random activations, same files
and reading path as data=lm), then `train_cfg(cfg)` runs on it while a thread samples RssAnon (memory
not backed by a file: a memory map's pages do not count, a copy of the cache in RAM would)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

RUN = textwrap.dedent("""
    import json, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from saeexp.data.lm import LMSource
    from saeexp.lm.harvest import NpyWriter

    class FakeLMSource(LMSource):
        # the real cache, reader and trainer; only the harvest is replaced by random activations
        def key(self):
            return {"fake": True, "n": self.harvest_tokens, "d": self.d_in}
        def _build(self, tmp):
            rng = np.random.default_rng(0)
            for name, n in (("heldout", self.heldout_tokens), ("train", self.harvest_tokens)):
                w = NpyWriter(tmp / f"{name}.npy", n, self.d_in, "float32")
                for lo in range(0, n, 65536):
                    import torch
                    w.write(torch.from_numpy(rng.standard_normal((min(65536, n - lo), self.d_in), dtype=np.float32)))
                w.close()
                np.save(tmp / f"{name}_windows.npy", np.zeros((1, 2), np.int32))
            return {"d_in": self.d_in, "n_train": self.harvest_tokens, "n_heldout": self.heldout_tokens,
                    "dtype": "float32", "first": 1}

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    from conftest import compose_cfg
    from conftest import train_cfg
    n, run_dir = int(sys.argv[2]), sys.argv[3]
    cfg = compose_cfg(["model=relu", "data=lm", "data._target_=__main__.FakeLMSource", "data.d_in=64",
                       f"data.harvest_tokens={n}", "data.heldout_tokens=4096", "data.model_eval=false",
                       "+data.chunk_tokens=16384", "+data.buffer_chunks=4", "model.d_sae=256",
                       "train.tokens=500_000", "train.batch_size=4096", "train.log_every=100"], run_dir=run_dir)
    FakeLMSource(**{k: v for k, v in cfg.data.items() if k != "_target_"}).prepare()  # build outside the measurement
    peak, stop = [anon_kb()], [False]
    def sample():
        while not stop[0]:
            peak.append(anon_kb()); time.sleep(0.005)
    t = threading.Thread(target=sample, daemon=True); t.start()
    train_cfg(cfg)
    stop[0] = True; t.join()
    print("RESULT", json.dumps({"peak_kb": max(peak)}))
""")


def _peak_anon_kb(tmp_path: Path, n: int) -> int:
    tests = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", RUN, tests, str(n), str(tmp_path / f"run{n}")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line.split(" ", 1)[1])["peak_kb"]


def test_cache_five_times_larger_does_not_raise_anonymous_memory(tmp_path):
    small, large = 100_000, 500_000  # 26 MB and 128 MB of activations: both fully read during training
    extra_kb = (large - small) * 64 * 4 // 1024
    peak_small = _peak_anon_kb(tmp_path, small)
    peak_large = _peak_anon_kb(tmp_path, large)
    print(f"peak RssAnon: {peak_small / 1024:.0f} MiB ({small:,} tokens), {peak_large / 1024:.0f} MiB ({large:,})")
    # a copy of the cache in anonymous memory would add ~100 MB; allow noise of a fifth of that
    assert peak_large - peak_small < extra_kb // 5, (peak_small, peak_large)
