"""Every model config's SAE declares its capabilities on the contract, and what it declares is true.

The trainer, loss terms, resampler and fine-tuning read these class attributes instead of probing for
parameters (saeexp/sae/base.py); a new variant is checked here by being a YAML in conf/model/.
"""
from __future__ import annotations

import pytest
import torch
from conftest import CONF, compose_cfg

from saeexp.build.plan import plan_run
from saeexp.errors import ConfigError
from saeexp.losses import L0, L1, L1DecoderNorm
from saeexp.sae.base import SAE

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.fixture(params=MODELS)
def sae(request):
    cfg = compose_cfg([f"model={request.param}", "data.d_in=8", "model.d_sae=32"])
    return plan_run(cfg).sae


def test_capabilities_are_declared_and_true(sae, one_thread):
    check_contract(sae)


def check_contract(sae) -> None:
    """What every SAE declares holds for this one (tests/test_new_variant.py runs it on a user's variant)."""
    assert isinstance(sae, SAE)
    assert sae.sparsity in ("penalty", "structure") and sae.sparsity_control in ("coefficient", "k")
    assert isinstance(sae.provides_l0, bool) and isinstance(sae.has_encoder_bias, bool)
    for name, dim in (*sae.encoder_rows, ("W_dec", 0)):  # what a resample rewrites exists, features along dim
        assert getattr(sae, name).shape[dim] == sae.d_sae, name
    for name in sae.encoder_weights:
        assert getattr(sae, name).ndim == 2
    if sae.has_encoder_bias:  # the fold fine-tuning relies on: (x - b_dec) W_enc + b_enc
        x = torch.randn(16, sae.d_in)
        torch.testing.assert_close(sae.encode_pre(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    sae.train()
    out = sae(torch.randn(64, sae.d_in))
    assert ("l0" in out.extras) == sae.provides_l0
    assert set(out.aux_losses) == {t for t in sae.aux_terms if getattr(sae, t) > 0}  # its own terms, declared
    if sae.sparsity_control == "k":
        assert isinstance(sae.k, int)


def test_the_declared_sparsity_decides_which_penalties_are_accepted(sae):
    l1 = (L1 if sae.decoder_norm == "unit" else L1DecoderNorm)(1e-3)  # the L1 that fits its decoder
    if sae.sparsity == "structure":
        with pytest.raises(ConfigError, match=type(sae).__name__):
            l1.validate(sae)
    else:
        l1.validate(sae)
    if sae.provides_l0:
        L0(1e-3).validate(sae)
    else:
        with pytest.raises(ConfigError):
            L0(1e-3).validate(sae)


@pytest.mark.parametrize("penalty", [L1, L1DecoderNorm, L0])
def test_a_penalty_refuses_the_decoder_handling_it_does_not_declare(penalty):
    from saeexp.sae import JumpReLUSAE

    for norm in ("unit", "free"):
        sae = JumpReLUSAE(8, 32, decoder_norm=norm)  # provides an L0 estimate: every penalty's sparsity fits
        if norm in penalty.decoder_norms:
            penalty(1e-3).validate(sae)
        else:
            with pytest.raises(ConfigError, match=rf"^loss={penalty.name} with model.decoder_norm={norm}: expected"):
                penalty(1e-3).validate(sae)


@pytest.mark.parametrize("overrides,norm,row_norm", [
    (["model=relu"], "unit", 1.0), (["model=relu", "loss=l1_decoder_norm"], "free", 0.1),
    (["model=jumprelu"], "free", 0.1), (["model=jumprelu", "loss=l1"], "unit", 1.0), (["model=topk"], "unit", 1.0),
    (["model=relu", "loss=l1_decoder_norm", "model.init_dec_norm=0.5"], "free", 0.5)])
def test_auto_decoder_handling_is_the_penalty_s(overrides, norm, row_norm):
    """`model.decoder_norm=auto` (every model's default) becomes the chosen penalty's first declared handling."""
    sae = plan_run(compose_cfg([*overrides, "data.d_in=8", "model.d_sae=32"])).sae
    assert sae.decoder_norm == norm
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((32,), row_norm))


def test_an_explicit_decoder_handling_the_penalty_does_not_take_is_refused():
    with pytest.raises(ConfigError, match="^loss=l1 with model.decoder_norm=free: expected model.decoder_norm=unit"):
        plan_run(compose_cfg(["model=relu", "loss=l1", "model.decoder_norm=free", "data.d_in=8", "model.d_sae=32"]))
