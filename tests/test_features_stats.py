"""Dashboard statistics without a model: the streamed top-k and histograms equal a computation over all tokens
at once, the page cannot be broken out of by a token's text, and the dashboard's on/off rules."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from saeexp.features import stats as S
from saeexp.features.html import render
from saeexp.sae import ReLUSAE


def test_streamed_top_k_and_histograms_equal_all_at_once(one_thread):
    torch.manual_seed(0)
    sae = ReLUSAE(16, 40).eval()
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # sparse: some features fire on fewer tokens than k
    x = torch.randn(3000, 16)
    vals_KF, rows_KF, count_F, n = S.stream_top(sae, iter(x.split(257)), 40, k=20)
    with torch.no_grad():
        acts = sae.encode(x)
    want = acts.topk(20, dim=0)
    fired = want.values > 0
    assert n == 3000 and torch.equal(count_F, (acts > 0).sum(0))
    assert torch.equal(rows_KF[fired], want.indices[fired]) and (rows_KF[~fired] == -1).all()
    torch.testing.assert_close(vals_KF[fired], want.values[fired])
    hist = S.histograms(sae, iter(x.split(500)), vals_KF[0].clamp_min(0), bins=8)
    assert torch.equal(hist.sum(1), count_F)
    f = int(count_F.argmax())
    live = acts[:, f][acts[:, f] > 0]
    torch.testing.assert_close(hist[f].float(), torch.histc(live, bins=8, min=0, max=float(live.max())), atol=1, rtol=0)


def test_context_activations_are_the_windows_own(one_thread):
    torch.manual_seed(0)
    sae, per = ReLUSAE(8, 12).eval(), 10
    x = torch.randn(7 * per, 8)  # 7 windows of 10 trained positions
    rows_FK = torch.randint(0, 7 * per, (12, 3))
    rows_FK[0, 2] = -1  # fewer contexts than k
    got = S.context_acts(sae, lambda lo, hi: x[lo:hi], rows_FK, per, half=4, block_rows=25)
    with torch.no_grad():
        acts = sae.encode(x)
    for f in range(12):
        for k in range(3):
            r = int(rows_FK[f, k])
            for j, o in enumerate(range(-4, 5)):
                same_window = r >= 0 and (r % per) + o in range(per)
                assert got[f, k, j] == (acts[r + o, f] if same_window else 0.0)


def test_neighbours_are_the_most_similar_other_rows():
    W = torch.eye(4).repeat(2, 1) + 0.01 * torch.arange(8.0)[:, None]  # rows i and i + 4 nearly parallel
    ids, cos = S.neighbours(W, n=1)
    assert ids.squeeze(1).tolist() == [4, 5, 6, 7, 0, 1, 2, 3] and (cos > 0.99).all()


def test_a_token_text_cannot_close_the_script():
    page = render(json.dumps({"vocab": {"1": "</script><b>x"}}))
    assert page.count("</script>") == 2  # the page's own two script tags only


@pytest.mark.parametrize("enabled, in_sweeps, mode, want", [
    (True, False, "RUN", True), (False, False, "RUN", False), (True, False, "MULTIRUN", False),
    (True, True, "MULTIRUN", True)])
def test_dashboard_runs_for_single_runs_unless_turned_off(monkeypatch, enabled, in_sweeps, mode, want):
    from conftest import compose_cfg
    from hydra.core.hydra_config import HydraConfig

    from saeexp.build.plan import plan_run

    cfg = compose_cfg([f"features.enabled={enabled}", f"features.in_sweeps={in_sweeps}", "model.d_sae=32"])
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=SimpleNamespace(name=mode))))
    assert plan_run(cfg).dashboard is want


def test_no_dashboard_without_token_windows_or_the_model(capsys):
    from saeexp.jobs.train import _dashboard

    called = []
    for windows, model in ((False, True), (True, False)):
        plan = SimpleNamespace(dashboard=True, source=SimpleNamespace(provides_windows=windows,
                                                                      provides_model_eval=model))
        _dashboard(plan, None, None, SimpleNamespace(experiment=None, run_id=None, called=called.append))
    assert "data.model_eval=false" in capsys.readouterr().out  # the run says why, and how to build it later
