"""A saved SAE loads with no trainer and, on raw activations, matches the module it was trained as."""
import torch

import saeexp
from saeexp.io import save_sae
from saeexp.losses import L1, MSE
from saeexp.sae import ReLUSAE
from saeexp.train.step import Recipe, manual_step


def test_save_then_load_matches_trained_module_on_raw_inputs(tmp_path):
    torch.manual_seed(0)
    raw = torch.randn(2048, 16) * 7.0 + 3.0  # far from the E||x|| = sqrt(d_in) convention
    scale = 16 ** 0.5 / raw.norm(dim=1).mean().item()
    sae = ReLUSAE(d_in=16, d_sae=48)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(30):  # trained in the scaled space, as the trainer does
        manual_step(sae, [MSE(), L1(1e-2)], opt, raw[torch.randint(0, 2048, (256,))], recipe=Recipe(scale))
    model_cfg = {"_target_": "saeexp.sae.ReLUSAE", "d_in": 16, "d_sae": 48}
    import copy

    folded = copy.deepcopy(sae)
    folded.fold_input_scale(scale)
    save_sae(folded, tmp_path / "sae", model_cfg, {"input_scale": scale})

    loaded = saeexp.load_sae(tmp_path / "sae")
    assert type(loaded) is ReLUSAE and not loaded.training
    x_raw = raw[:100]
    with torch.no_grad():
        want_x_hat = sae(x_raw * scale).x_hat_BD / scale
        want_f = sae.encode(x_raw * scale)
        got = loaded(x_raw)
    torch.testing.assert_close(got.x_hat_BD, want_x_hat, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded.encode(x_raw), want_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded.decode(want_f), want_x_hat, rtol=1e-4, atol=1e-4)
    assert "lightning" not in type(loaded).__module__
