"""bench/gpu_check.py --smoke: the prepared GPU check runs end to end at tiny sizes on the CPU, so it cannot rot
before a GPU is lent (its table, every variant at both widths and precisions, the SAELens skip, the demo)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

from saeexp.configtree import CONF_DIR


def test_gpu_check_smoke_prints_the_whole_table(tmp_path):
    # an empty cache: no SAELens venv, so the check must skip it with a line rather than build it (no network
    # on a lent GPU machine)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAEEXP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "SAELens: skipped" in out
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(fp32|bf16)\s+([\d.]+)\s+(\d+)\s+([\d.]+)%", out, re.M)
    variants = {f.stem for f in (CONF_DIR / "model").glob("*.yaml")}
    assert {(v, w, prec) for v, w, prec, *_ in rows} == {(v, w, prec) for v in variants for w in ("64", "128")
                                                          for prec in ("fp32", "bf16")}, out
    assert all(float(ms) > 0 and int(tok) > 0 for *_, ms, tok, _ in rows)
    assert re.search(r"^demo: \d+ s end to end, L0 [\d.]+, FVU [\d.]+", out, re.M), out
