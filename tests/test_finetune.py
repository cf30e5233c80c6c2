"""Fine-tuning against feature suppression (reference 003): on a shrunk SAE, `scale` and `decoder` raise the L2
ratio toward 1 and lower MSE with L0 unchanged; each method trains exactly its parameters; the result is
saved as a normal SAE that reproduces the fine-tuned reconstruction."""
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

from saeexp.build.saved import plan_finetune
from saeexp.data.synthetic import SyntheticSource
from saeexp.errors import ConfigError
from saeexp.io import load_meta, load_sae, save_sae
from saeexp.jobs.finetune import METHODS, ScaledSAE, finetune, finetune_saved
from saeexp.losses import L1, MSE
from saeexp.metrics import evaluate
from saeexp.sae import SCSAE, GatedSAE
from saeexp.sae.relu import ReLUSAE
from saeexp.train.step import Recipe, manual_step

DATA = {"_target_": "saeexp.data.synthetic.SyntheticSource", "d_in": 16, "n_features": 32, "max_p": 0.5, "alpha": 0.3,
        "heldout_tokens": 4096, "seed": 0}



def _shrunk_sae(steps=300):
    """A ReLU SAE trained with a strong L1: its reconstructions are too short (feature suppression)."""
    torch.manual_seed(0)
    src = SyntheticSource(**{k: v for k, v in DATA.items() if k != "_target_"})
    scale = 16 ** 0.5 / src.sample(4096, 0).norm(dim=1).mean().item()
    sae = ReLUSAE(16, 48, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    batches = src.batches(512, seed=0)
    terms, recipe = [MSE(), L1(0.05)], Recipe(input_scale=scale)
    for step in range(steps):
        manual_step(sae, terms, opt, next(batches), step, recipe)
    return src, sae, scale


@pytest.fixture(scope="module")
def shrunk():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _shrunk_sae()
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("method", ["scale", "decoder"])
def test_finetuning_undoes_shrinkage_with_l0_unchanged(method, shrunk, one_thread):
    src, sae, scale = shrunk
    x_eval = src.heldout() * scale
    before = evaluate(sae, x_eval)
    assert before["l2_ratio"] < 0.9  # the premise: a suppressed SAE
    model = finetune(sae, src.batches(512, seed=1), scale, method, steps=200, lr=1e-2)
    after = evaluate(model.to_sae(), x_eval)
    assert after["mse"] < 0.9 * before["mse"]
    assert after["l2_ratio"] > before["l2_ratio"] + 0.05 and abs(1 - after["l2_ratio"]) < abs(1 - before["l2_ratio"])
    assert after["l0"] == before["l0"] and after["dead"] == before["dead"]  # the same features fire
    assert (model.s > 1).float().mean() > 0.5  # mostly scaled up
    # the plain SAE computes exactly what the fine-tuned model does
    x = x_eval[:256]
    torch.testing.assert_close(model.to_sae()(x).x_hat_BD, model(x).x_hat_BD, rtol=1e-4, atol=1e-4)


EXPECTED = {  # method -> parameters that move (besides s)
    "scale": set(), "decoder": {"sae.W_dec", "b_dec"}, "unrotated_decoder": {"b_dec"},
    "encoder": {"sae.W_enc", "sae.b_enc"}, "unrotated_encoder": {"sae.b_enc"},
    "unrotated_all": {"sae.b_enc", "b_dec"},
}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_exactly_its_parameters(method, shrunk, one_thread):
    src, sae, scale = shrunk
    model = ScaledSAE(sae, method, src.heldout()[:512] * scale)
    assert model.folded  # ReLU: b_dec folded into the encoder bias
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned = finetune(sae, src.batches(512, seed=1), scale, method, steps=5, lr=1e-2)
    moved = {n for n, p in tuned.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert moved == EXPECTED[method] | {"s"}
    if method in ("scale", "decoder", "unrotated_decoder"):
        x = src.heldout()[:1024] * scale
        assert torch.equal(tuned.to_sae().encode(x) > 0, sae.encode(x) > 0)  # decoder side: same firing


def test_fold_keeps_activations_and_is_refused_where_impossible(one_thread):
    x = torch.randn(64, 8) * 3
    for cls in (ReLUSAE, SCSAE, GatedSAE):
        sae = cls(8, 16, seed=1)
        with torch.no_grad():
            sae.b_dec.copy_(torch.randn(8))
            if hasattr(sae, "b_enc"):
                sae.b_enc.copy_(torch.randn(16) * 0.1)
        model = ScaledSAE(sae, "scale", x)
        torch.testing.assert_close(model(x).x_hat_BD, sae(x).x_hat_BD, rtol=1e-4, atol=1e-4)  # s = 1: the same SAE
        assert model.folded == (cls is ReLUSAE)
        if cls is not ReLUSAE:
            with pytest.raises(ConfigError, match="decoder bias"):
                ScaledSAE(sae, "decoder", x)
    with pytest.raises(ConfigError):
        ScaledSAE(ReLUSAE(8, 16), "everything", x)


def test_cli_config_scores_before_after_and_saves_a_normal_sae(shrunk, tmp_path, one_thread):
    src, sae, scale = shrunk
    raw = ReLUSAE(16, 48)
    raw.load_state_dict(sae.state_dict())
    raw.fold_input_scale(scale)
    model_cfg = {"_target_": "saeexp.sae.ReLUSAE", "d_in": 16, "d_sae": 48, "decoder_norm": "unit"}
    save_sae(raw, tmp_path / "run" / "sae", model_cfg, {"input_scale": scale, "d_in": 16, "d_sae": 48,
                                                        "data": DATA})
    cfg = compose_cfg([f"sae={tmp_path / 'run'}", "method=decoder", "tokens=51200", "batch_size=512", "lr=1e-2"],
                      config_name="finetune")
    result = finetune_saved(plan_finetune(cfg))
    out = Path(result["out"])  # under the runs root, named after the run and method, never beside the SAE read
    assert out.parent == Path(os.environ["SAEEXP_RUNS"]) / "finetune" and out.name.startswith("run_decoder__")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["sae"]
    b, a = result["before"], result["after"]
    assert a["mse"] < b["mse"] and abs(1 - a["l2_ratio"]) < abs(1 - b["l2_ratio"]) and a["l0"] == b["l0"]
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert set(summary["before_after"]) >= {"mse", "l2_ratio", "l0"}
    assert (out / "finetune_metrics.json").exists()
    # saved as a normal SAE of raw inputs: loading it and scoring reproduces the 'after' metrics
    tuned = load_sae(out)
    meta = load_meta(out)
    assert meta["finetune"]["method"] == "decoder" and meta["input_scale"] == pytest.approx(scale)
    assert OmegaConf.load(out / "sae" / "config.yaml").model.decoder_norm == "free"  # rows carry s
    tuned.fold_input_scale(1.0 / scale)
    again = evaluate(tuned, src.heldout() * scale)
    assert again["mse"] == pytest.approx(a["mse"], rel=1e-4) and again["l0"] == a["l0"]
