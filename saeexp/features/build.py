"""`features.html` for a run: the statistics of `stats.py` on the held-out windows of a `data=lm` source, packed
into one self-contained HTML file (`html.py`) that opens from disk with no server."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import torch

from saeexp.features import stats as S
from saeexp.features.html import render
from saeexp.util.files import atomic_write_text

CHUNK = 4096  # held-out rows encoded at a time: memory is O(CHUNK x d_sae) whatever the token count


def _reader(source):
    """(chunks() iterator factory, read_rows(lo, hi), rows per window, first trained position) of an LM source."""
    read, n = source._array("heldout")
    per = source.context_size - source.first

    def chunks():
        for lo in range(0, n, CHUNK):
            buf = torch.empty(min(CHUNK, n - lo), source.d_in)
            read(lo, lo + buf.shape[0], buf)
            yield buf

    def read_rows(lo, hi):
        buf = torch.empty(hi - lo, source.d_in)
        read(lo, hi, buf)
        return buf

    return chunks, read_rows, per, source.first


def compute(sae, source, k: int = S.TOP) -> S.FeatureStats:
    """Everything the dashboard shows, for an SAE on raw activations and a prepared `data=lm` source."""
    sae = sae.eval().cpu()  # the held-out chunks are read on the CPU
    chunks, read_rows, per, first = _reader(source)
    vals_KF, rows_KF, count_F, n = S.stream_top(sae, chunks(), sae.d_sae, k)
    max_F = vals_KF[0].clamp_min(0)
    st = S.FeatureStats(n, count_F.float() / max(n, 1), max_F, rows_KF.t().contiguous(), vals_KF.t().contiguous(),
                        S.histograms(sae, chunks(), max_F))
    st.extras["ctx_FKO"] = S.context_acts(sae, read_rows, st.top_rows_FK, per)
    W_dec = sae.W_dec.detach()
    bridge = source.bridge()
    st.extras["logits"] = S.logit_effects(W_dec, bridge.W_U.detach().to(W_dec.device))
    st.extras["neighbours"] = S.neighbours(W_dec)
    st.extras["tokenizer"] = bridge.tokenizer
    st.extras["windows"] = source.windows("heldout")
    st.extras["per"], st.extras["first"] = per, first
    return st


def _r(t, digits=4) -> list:
    return [float(f"{v:.{digits}g}") for v in t.tolist()]


def pack(st: S.FeatureStats, title: str) -> dict:
    """The dashboard's data as JSON-ready lists: activations quantised to a byte of each feature's maximum."""
    up_i, up_v, dn_i, dn_v = st.extras["logits"]
    nb_i, nb_c = st.extras["neighbours"]
    q_FKO = (st.extras["ctx_FKO"] / st.max_F.clamp_min(1e-12)[:, None, None] * 255).round().clamp(0, 255)
    q_FKO = q_FKO.to(torch.uint8)
    used_windows = sorted({int(r) // st.extras["per"] for r in st.top_rows_FK[st.top_rows_FK >= 0].tolist()})
    windows = {str(w): st.extras["windows"][w].tolist() for w in used_windows}
    ids = {i for w in windows.values() for i in w} | set(up_i.flatten().tolist()) | set(dn_i.flatten().tolist())
    tok = st.extras["tokenizer"]
    vocab = {str(i): tok.decode([i]) for i in sorted(ids)}
    feats = []
    for f in range(st.density_F.shape[0]):
        rows = st.top_rows_FK[f]
        keep = rows >= 0
        feats.append({
            "ctx": [[int(r), float(f"{v:.4g}"), base64.b64encode(q.numpy().tobytes()).decode()]
                    for r, v, q in zip(rows[keep].tolist(), st.top_vals_FK[f][keep].tolist(), q_FKO[f][keep])],
            "hist": st.hist_FB[f].tolist(),
            "up": [[int(i), float(f"{v:.3g}")] for i, v in zip(up_i[f].tolist(), up_v[f].tolist())],
            "down": [[int(i), float(f"{v:.3g}")] for i, v in zip(dn_i[f].tolist(), dn_v[f].tolist())],
            "nb": [[int(i), float(f"{c:.3g}")] for i, c in zip(nb_i[f].tolist(), nb_c[f].tolist())],
        })
    return {"title": title, "n_tokens": st.n_tokens, "d_sae": int(st.density_F.shape[0]), "half": S.HALF,
            "per": st.extras["per"], "first": st.extras["first"], "bins": S.BINS,
            "density": _r(st.density_F), "max": _r(st.max_F), "windows": windows, "vocab": vocab, "features": feats}


def write(sae, source, out: str | Path, title: str) -> dict:
    """Compute and write the dashboard to `out` (atomically); returns its size and build time."""
    t0 = time.perf_counter()
    source.prepare()
    data = pack(compute(sae, source), title)
    out = Path(out)
    atomic_write_text(out, render(json.dumps(data, separators=(",", ":"))))
    return {"path": str(out), "bytes": out.stat().st_size, "seconds": time.perf_counter() - t0}
