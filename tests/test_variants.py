"""SAE variants of issue 4: each one's defining property, which penalties it takes, and that it trains."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONF, compose_cfg, expected_refusal
from hydra.utils import get_class

from saeexp.errors import ConfigError
from saeexp.losses import L0, L1, L1DecoderNorm
from saeexp.sae import SCSAE, BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saeexp.sae.batchtopk import kth_largest

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
COMBOS = [(m, loss) for m in MODELS for loss in LOSSES]


def _build(model, loss, *extra, d_sae=64):
    from saeexp.build.plan import plan_run

    p = plan_run(compose_cfg([f"model={model}", f"loss={loss}", f"model.d_sae={d_sae}", *extra]))
    return p.source, p.sae, p.penalties, p.resampler


def _train_steps(sae, penalties, x_NB, steps, batch=256, lr=1e-3):
    """What SAEModule does per batch (loss terms, decoder-norm handling, Adam, firing bookkeeping)."""
    from saeexp.losses import MSE
    from saeexp.train.step import manual_step

    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sae.train()
    for i in range(steps):
        x = x_NB[(i * batch) % (len(x_NB) - batch):][:batch]
        _, terms = manual_step(sae, [MSE(), *penalties], opt, x)
        assert torch.isfinite(sum(terms.values())), terms
    return terms


@pytest.mark.parametrize("model,loss", COMBOS, ids=[f"{m}+{loss}" for m, loss in COMBOS])
def test_combination_trains_or_is_refused(model, loss):
    """The combinations the SAE's declared capabilities rule out are refused, naming the SAE and a loss= to
    use; every other one trains."""
    if expected_refusal(model, loss):
        with pytest.raises(ConfigError) as e:
            _build(model, loss)
        sae_cls = get_class(compose_cfg([f"model={model}"]).model._target_).__name__
        assert sae_cls in str(e.value) and "loss=" in str(e.value), str(e.value)
        return
    source, sae, penalties, *_ = _build(model, loss)
    x = source.sample(1024, seed=0) * 3.0
    before = {k: v.detach().clone() for k, v in sae.named_parameters()}
    terms = _train_steps(sae, penalties, x, steps=3)
    assert "recon" in terms
    assert any(not torch.equal(before[k], v) for k, v in sae.named_parameters())
    # the SAE's own terms are the declared ones whose coefficient (the attribute of the same name) is > 0
    assert set(terms) - {"recon", *(p.name for p in penalties)} == {t for t in sae.aux_terms if getattr(sae, t) > 0}


@pytest.mark.parametrize("model,loss", [("topk", "l1"), ("gated", "l0"), ("relu", "none")])
def test_refusals_say_what_to_do(model, loss):
    with pytest.raises(ConfigError) as e:
        _build(model, loss)
    assert "loss=" in str(e.value)


def test_gated_composes_as_typed():
    """`saeexp model=gated loss.l1=2e-3`: the gated model with its default penalty at that coefficient."""
    source, sae, penalties, *_ = _build("gated", "l1", "loss.l1=2e-3")
    assert isinstance(sae, GatedSAE) and isinstance(penalties[0], L1) and penalties[0].coef == 2e-3
    cfg = compose_cfg(["model=gated", "loss.l1=2e-3"])  # no loss= needed: the model's YAML picks it
    assert cfg.loss._target_ == "saeexp.losses.L1"
    assert compose_cfg(["model=jumprelu"]).loss._target_ == "saeexp.losses.L0"
    assert compose_cfg(["model=topk"]).loss.get("_target_") is None


@pytest.mark.slow  # Lightning + MLflow start-up
def test_topk_trains_end_to_end_and_loads(tmp_path):
    """Through the real trainer (firing bookkeeping on the lazily densified activations, AuxK logged)."""
    from conftest import train_cfg

    from saeexp.io import load_sae

    cfg = compose_cfg(["model=topk", "model.k=4", "model.d_sae=64", "train.tokens=8192", "train.batch_size=1024",
                       "model.dead_window_tokens=2048"], run_dir=tmp_path / "run")
    result = train_cfg(cfg)
    assert 0 < result["l0"] <= 4
    assert isinstance(load_sae(tmp_path / "run"), TopKSAE)


# --- save -> load on raw inputs, every variant (fold of the input scale, buffers) -------------------------

@pytest.mark.parametrize("model", [m for m in MODELS])
def test_saved_variant_gives_same_outputs_on_raw_inputs(model, tmp_path):
    from saeexp.build.plan import plan_run
    from saeexp.io import load_sae, save_sae

    plan = plan_run(compose_cfg([f"model={model}", "model.d_sae=64"]))  # with the penalty the model's YAML picks
    source, sae, penalties = plan.source, plan.sae, plan.penalties
    x = source.sample(2048, seed=1)
    scale = 3.0
    _train_steps(sae, penalties, x * scale, steps=4)
    sae.eval()
    raw = copy.deepcopy(sae)
    raw.fold_input_scale(scale)
    save_sae(raw, tmp_path / "sae", {**plan.model_config, "decoder_norm": raw.decoder_norm}, {})
    loaded = load_sae(tmp_path / "sae")
    with torch.no_grad():
        ref, got = sae(x[:512] * scale), loaded(x[:512])
    torch.testing.assert_close(got.acts_BF, ref.acts_BF, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.x_hat_BD * scale, ref.x_hat_BD, atol=1e-4, rtol=1e-4)


# --- JumpReLU -----------------------------------------------------------------------------------------------

def _identity_jumprelu(theta, eps, **kw):
    sae = JumpReLUSAE(2, 2, bandwidth=eps, init_threshold=1.0, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if sae.threshold_param == "log":
            sae.log_threshold.copy_(torch.tensor(theta).log())
        else:
            sae.threshold.copy_(torch.tensor(theta))
    return sae


# z = x (identity encoder), theta = (1, 2), eps = 0.5: the rectangle kernel sees |z - theta| < 0.25
X_JUMP = torch.tensor([[1.1, 2.3], [0.9, 1.8], [1.2, 2.1], [3.0, 0.0]])
G_JUMP = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])


def test_jumprelu_threshold_gradient_is_the_pseudo_derivative():
    sae, lam = _identity_jumprelu([1.0, 2.0], 0.5), 0.1
    out = sae(X_JUMP)
    torch.testing.assert_close(out.acts_BF, torch.tensor([[1.1, 2.3], [0.0, 0.0], [1.2, 2.1], [3.0, 0.0]]))
    assert out.extras["l0"].item() == pytest.approx(5 / 4)
    loss = (out.acts_BF * G_JUMP).sum() + L0(lam)(X_JUMP, out, sae)
    loss.backward()
    # by hand: d/dtheta_i = -(theta_i / eps) sum_b G_bi K_bi - (lam / (eps B)) sum_b K_bi
    # feature 0 (theta 1): z = 1.1, 0.9, 1.2 in the band -> -(1 / .5)(1 + 3 + 5) - .1 * 3 / 2 = -18.15
    # feature 1 (theta 2): z = 1.8, 2.1 in the band (2.3 is not) -> -(2 / .5)(4 + 6) - .1 * 2 / 2 = -40.1
    torch.testing.assert_close(sae.threshold.grad, torch.tensor([-18.15, -40.1]))
    # d f / d z = H(z - theta): W_enc's gradient is x^T (G * H)
    H = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(sae.W_enc.grad, X_JUMP.t() @ (G_JUMP * H))


def test_jumprelu_l0_trains_only_the_threshold():
    sae = _identity_jumprelu([1.0, 2.0], 0.5)
    out = sae(X_JUMP)
    L0(1.0)(X_JUMP, out, sae).backward()
    torch.testing.assert_close(sae.threshold.grad, torch.tensor([-3 / 2, -2 / 2]))  # -(1 / (eps B)) sum_b K
    assert sae.W_enc.grad is None or not sae.W_enc.grad.any()
    assert sae.b_enc.grad is None or not sae.b_enc.grad.any()


def test_jumprelu_log_parametrisation_and_triangle_kernel():
    sae = _identity_jumprelu([1.0, 2.0], 0.5, threshold_param="log")
    out = sae(X_JUMP)
    (out.acts_BF * G_JUMP).sum().backward()
    # d/dlog(theta) = theta * d/dtheta
    torch.testing.assert_close(sae.log_threshold.grad, torch.tensor([1.0, 2.0]) * torch.tensor([-18.0, -40.0]))
    sae = _identity_jumprelu([1.0, 2.0], 0.5, kernel="triangle")  # K(u) = 1 - |u| on |u| < 1
    out = sae(X_JUMP)
    L0(1.0)(X_JUMP, out, sae).backward()
    # feature 0: u = .2, -.2, .4 -> K = .8 + .8 + .6; feature 1: u = .6, -.4, .2 -> .4 + .6 + .8
    torch.testing.assert_close(sae.threshold.grad, -torch.tensor([2.2, 1.8]) / (0.5 * 4))


def test_jumprelu_pre_act_loss_revives_only_dead_latents():
    sae = _identity_jumprelu([1.0, 2.0], 0.5, pre_act=0.5, dead_window_tokens=10)
    with torch.no_grad():
        sae.W_dec.copy_(torch.diag(torch.tensor([2.0, 3.0])))
        sae.tokens_since_fired.copy_(torch.tensor([10, 9]))  # latent 0 dead, latent 1 not (yet)
    out = sae(X_JUMP)
    # by hand, latent 0 only: z = 1.1, 0.9, 1.2, 3.0 below theta 1 once (gap .1); .5 * .1 * ||W_dec_0|| 2 / B 4
    assert out.aux_losses["pre_act"].item() == pytest.approx(0.025)
    out.aux_losses["pre_act"].backward()
    torch.testing.assert_close(sae.threshold.grad, torch.tensor([0.25, 0.0]))  # .5 * 2 / 4, theta goes down
    torch.testing.assert_close(sae.b_enc.grad, torch.tensor([-0.25, 0.0]))  # ... and z up
    torch.testing.assert_close(sae.W_enc.grad, torch.tensor([[-0.25 * 0.9, 0.0], [-0.25 * 1.8, 0.0]]))
    sae.eval()  # not a training loss: no term at evaluation
    assert "pre_act" not in sae(X_JUMP).aux_losses


def test_jumprelu_threshold_learns_at_its_own_rate():
    from functools import partial

    from saeexp.train.module import SAEModule

    for scale, theta_lr in ((None, 1e-3), (4.0, 4e-3)):  # the configured lr by default (SAELens')
        sae = JumpReLUSAE(16, 8, threshold_lr_scale=scale)
        opt = SAEModule(sae, [L0(0.1)], partial(torch.optim.Adam, lr=1e-3), total_steps=10) \
            .configure_optimizers()["optimizer"]
        lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert lr[id(sae.threshold)] == pytest.approx(theta_lr)
        assert lr[id(sae.W_enc)] == pytest.approx(1e-3) and len(lr) == len(list(sae.parameters()))


def test_jumprelu_threshold_stays_positive_and_moves_in_a_short_run():
    source, sae, penalties, *_ = _build("jumprelu", "l0", "loss.l0=1e-2")
    theta0 = sae.theta().detach().clone()
    _train_steps(sae, penalties, source.sample(8192, seed=0) * 3.0, steps=30)
    theta = sae.theta().detach()
    assert (theta > 0).all()
    assert (theta - theta0).abs().mean() > theta0.mean()  # moved by more than its initial size


# --- Gated ------------------------------------------------------------------------------------------------

def _random_gated(d_in=8, d_sae=16, **kw):
    torch.manual_seed(0)
    sae = GatedSAE(d_in, d_sae, **kw)
    theta = torch.rand(d_sae) * 0.5  # equivalent JumpReLU threshold >= 0
    with torch.no_grad():
        sae.W_gate.normal_()
        sae.b_gate.normal_()
        sae.r_mag.normal_(std=0.5)
        sae.b_mag.copy_(theta + sae.r_mag.exp() * sae.b_gate)
        sae.b_dec.normal_()
    return sae, theta


def test_gated_forward_is_a_jumprelu_with_the_equivalent_threshold():
    gated, theta = _random_gated()
    jump = JumpReLUSAE(8, 16)
    with torch.no_grad():
        jump.W_enc.copy_(gated.W_gate * gated.r_mag.exp())
        jump.b_enc.copy_(gated.b_mag)
        jump.threshold.copy_(theta)  # b_mag - exp(r_mag) * b_gate
        jump.W_dec.copy_(gated.W_dec)
        jump.b_dec.copy_(gated.b_dec)
    x = torch.randn(256, 8) * 2
    g, j = gated(x), jump(x)
    assert (g.acts_BF > 0).any() and (g.acts_BF == 0).any()
    torch.testing.assert_close(g.acts_BF, j.acts_BF, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.x_hat_BD, j.x_hat_BD, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("free_decoder", ["frozen_in_penalty", "unfrozen_in_aux"])
def test_gated_auxiliary_term_and_penalty_leave_the_decoder_as_configured(free_decoder):
    sae, _ = _random_gated(decoder_norm="free", free_decoder=free_decoder)
    x = torch.randn(64, 8)
    out = sae(x)
    out.aux_losses["aux_recon"].backward(retain_graph=True)
    frozen = free_decoder == "frozen_in_penalty"
    assert (sae.W_dec.grad is None) == frozen
    assert sae.W_gate.grad.abs().sum() > 0  # the auxiliary term trains the gate
    sae.zero_grad(set_to_none=True)
    penalty = L1DecoderNorm(1.0)
    penalty(x, out, sae).backward()
    assert (sae.W_dec.grad is None) == frozen
    # the penalty is on ReLU(pi), the gate, not on f
    pi = (x - sae.b_dec) @ sae.W_gate + sae.b_gate
    expected = (torch.relu(pi) @ sae.W_dec.norm(dim=1)).mean()
    torch.testing.assert_close(penalty(x, out, sae), expected)
    assert sae.r_mag.grad is None and sae.b_mag.grad is None  # magnitude path: no gradient from the penalty


def test_gated_default_trains_the_decoder_through_the_auxiliary_term():
    """SAELens' choice, not the paper's: with a frozen auxiliary decoder the gated SAE reconstructs through
    directions that are not the features at moderate sparsity (conf/model/gated.yaml has the measurement)."""
    assert compose_cfg(["model=gated"]).model.free_decoder == "unfrozen_in_aux"
    for frozen in (False, True):  # with the default unit-norm decoder too
        sae = GatedSAE(8, 16, free_decoder="frozen_in_penalty" if frozen else "unfrozen_in_aux")
        sae(torch.randn(32, 8)).aux_losses["aux_recon"].backward()
        assert (sae.W_dec.grad is None) == frozen
    with pytest.raises(ConfigError, match="free_decoder='thawed'"):
        GatedSAE(8, 16, free_decoder="thawed")


@pytest.mark.parametrize("free_decoder", ["unfrozen_in_aux", "frozen_in_penalty"])
def test_gated_gradients_match_autograd_on_the_plain_formula(free_decoder):
    sae, _ = _random_gated(free_decoder=free_decoder)
    stop = (lambda t: t.detach()) if free_decoder == "frozen_in_penalty" else (lambda t: t)
    x = torch.randn(128, 8)
    out = sae(x)
    loss = ((out.x_hat_BD - x) ** 2).mean() + L1(0.1)(x, out, sae) + out.aux_losses["aux_recon"]
    got = torch.autograd.grad(loss, list(sae.parameters()))
    # the same loss written with plain autograd ops (Heaviside gate without gradient)
    p = dict(sae.named_parameters())
    xc = x - p["b_dec"]
    pi = xc @ p["W_gate"] + p["b_gate"]
    f = (pi > 0).float() * torch.relu(xc @ (p["W_gate"] * p["r_mag"].exp()) + p["b_mag"])
    aux = ((torch.relu(pi) @ stop(p["W_dec"]) + stop(p["b_dec"]) - x) ** 2).mean()
    ref_loss = ((f @ p["W_dec"] + p["b_dec"] - x) ** 2).mean() + 0.1 * torch.relu(pi).sum() / 128 + aux
    ref = torch.autograd.grad(ref_loss, list(sae.parameters()))
    for name, a, b in zip(dict(sae.named_parameters()), got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


# --- SCSAE (reference 000's numbers) ----------------------------------------------------------------------

def _one_unit(cls, w, b):
    sae = cls(1, 1, init_dec_norm=1.0)
    with torch.no_grad():
        sae.W_enc.fill_(w)
        sae.b_enc.fill_(b)
        sae.W_dec.fill_(1.0)
        sae.b_dec.zero_()
    return sae


def test_scsae_reference_numbers():
    x = torch.tensor([[0.3], [0.5], [1.0], [2.0]])  # noise up to 0.5, magnitude 1, then 2
    relu = _one_unit(ReLUSAE, 2.0, -1.0)  # filters the noise, reproduces magnitude 1 ...
    torch.testing.assert_close(relu(x).x_hat_BD.squeeze(1), torch.tensor([0.0, 0.0, 1.0, 3.0]))  # ... 2 -> 3
    sc = _one_unit(SCSAE, 1.0, -0.5)
    torch.testing.assert_close(sc(x).x_hat_BD.squeeze(1), torch.tensor([0.0, 0.0, 1.0, 2.0]))


def test_scsae_backward_is_relus():
    torch.manual_seed(0)
    sc, relu = SCSAE(8, 32), ReLUSAE(8, 32)
    with torch.no_grad():
        sc.b_enc.normal_()
        sc.b_dec.normal_()
    relu.load_state_dict(sc.state_dict())
    x, G = torch.randn(64, 8), torch.randn(64, 32)
    a_sc, a_relu = sc.encode(x), relu.encode(x)
    on = a_relu > 0
    torch.testing.assert_close(a_sc[on], (a_relu - relu.b_enc)[on])  # forward: bias not added
    assert not a_sc[~on].any()
    g_sc = torch.autograd.grad((a_sc * G).sum(), [sc.W_enc, sc.b_enc, sc.b_dec])
    g_relu = torch.autograd.grad((a_relu * G).sum(), [relu.W_enc, relu.b_enc, relu.b_dec])
    for a, b in zip(g_sc, g_relu):
        torch.testing.assert_close(a, b)


# --- TopK / BatchTopK -------------------------------------------------------------------------------------

def test_topk_keeps_at_most_k_and_exactly_k_when_positive():
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, k=5)
    x = torch.randn(128, 16)
    for mode in (sae.train, sae.eval):
        mode()
        assert ((sae(x).acts_BF > 0).sum(1) <= 5).all()
        assert ((sae.encode(x) > 0).sum(1) <= 5).all()
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive
    assert ((sae(x).acts_BF > 0).sum(1) == 5).all()


@pytest.mark.parametrize("n_dead", [0, 4, 40])
def test_topk_sparse_path_matches_dense_autograd(n_dead):
    """Sparse decode and sparse backward (and AuxK, sparse or dense) equal the plain dense formulas."""
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, k=5, k_aux=3, dead_window_tokens=1)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    sae.tokens_since_fired[:n_dead] = 10
    x = torch.randn(32, 16)
    out = sae(x)
    loss = ((out.x_hat_BD - x) ** 2).mean() + out.aux_losses["auxk"]
    got = torch.autograd.grad(loss, list(sae.parameters()))
    p = dict(sae.named_parameters())
    z = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    v, i = z.topk(5, dim=1)
    acts = torch.zeros_like(z).scatter(1, i, v.relu())
    x_hat = acts @ p["W_dec"] + p["b_dec"]
    ref_loss = ((x_hat - x) ** 2).mean()
    if n_dead:
        e = (x - x_hat).detach()
        va, ia = z[:, :n_dead].topk(3, dim=1)
        e_hat = torch.zeros(32, n_dead).scatter(1, ia, va.relu()) @ p["W_dec"][:n_dead]
        ref_loss = ref_loss + ((e_hat - e) ** 2).sum() / (e ** 2).sum() / 32
    else:
        assert out.aux_losses["auxk"] == 0
    torch.testing.assert_close(out.x_hat_BD, x_hat)
    ref = torch.autograd.grad(ref_loss, list(sae.parameters()))
    for name, a, b in zip(p, got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_batchtopk_keeps_k_per_token_on_average_and_infers_with_its_threshold():
    torch.manual_seed(0)
    sae = BatchTopKSAE(16, 256, k=8)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)
    x = torch.randn(512, 16)
    acts = sae(x).acts_BF
    assert (acts > 0).sum().item() == 8 * 512
    assert (acts > 0).sum(1).float().std() > 0  # per token it varies
    t = sae.threshold.item()
    assert t > 0 and t == pytest.approx(acts[acts > 0].min().item())  # first batch: the smallest kept
    sae.eval()
    pre = sae.encode_pre(x)
    torch.testing.assert_close(sae(x).acts_BF, pre * (pre > t))  # a JumpReLU with the estimated threshold
    assert "threshold" in sae.artifact_state()


def test_kth_largest_is_exact():
    g = torch.Generator().manual_seed(0)
    for B, F, m in [(64, 100, 640), (256, 4096, 256 * 32), (7, 3, 21), (50, 64, 1)]:
        z = torch.randn(B, F, generator=g)
        assert kth_largest(z, m).item() == z.flatten().topk(m).values.min().item()
    z = torch.zeros(64, 128)
    z[:, :2] = torch.randn(64, 2)  # a skewed sample: the guess fails and all values are searched
    assert kth_largest(z, 100).item() == z.flatten().topk(100).values.min().item()


def test_auxk_revives_dead_latents():
    """Latents that never win the top k get no gradient but AuxK's: with it they come back."""
    alive = {}
    for auxk in (0.0, 1 / 32):
        torch.manual_seed(0)
        sae = TopKSAE(16, 64, k=4, auxk=auxk, k_aux=8, dead_window_tokens=512)
        with torch.no_grad():
            sae.W_enc[:, 32:] *= 0.01  # half the latents lose every top-k
        x = torch.randn(16384, 16) * 4
        _train_steps(sae, [], x, steps=80, lr=3e-3)
        sae.eval()
        with torch.no_grad():
            fired = (sae(x[:4096]).acts_BF[:, 32:] > 0).any(0)
        alive[auxk] = int(fired.sum())
    assert alive[0.0] <= 2 and alive[1 / 32] >= 16, alive


def test_batchtopk_sparse_training_path_matches_dense_autograd():
    torch.manual_seed(0)
    sae = BatchTopKSAE(16, 64, k=3, auxk=0.0)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(32, 16)
    out = sae(x)
    got = torch.autograd.grad(((out.x_hat_BD - x) ** 2).mean(), list(sae.parameters()))
    p = dict(sae.named_parameters())
    z = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    t = z.detach().flatten().topk(3 * 32).values.min()
    acts = z * (z >= t) * (z > 0)
    torch.testing.assert_close(out.acts_BF, acts.detach())
    ref = torch.autograd.grad(((acts @ p["W_dec"] + p["b_dec"] - x) ** 2).mean(), list(sae.parameters()))
    for name, a, b in zip(p, got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_clipping_is_stated_on_the_loss_summed_over_d_in():
    """`train.grad_clip` c clips saeexp's mean-over-d_in loss at c / d_in (SAELens' clip at 1 = ours at 1)."""
    from saeexp.train.module import SAEModule
    from saeexp.train.step import clip_grad

    def with_grads(scale):
        sae = ReLUSAE(16, 32, decoder_norm="free")  # (a unit decoder's hook would change the gradient too)
        for p in sae.parameters():
            p.grad = torch.full_like(p, scale)
        return sae

    def norm(sae):
        return torch.cat([p.grad.flatten() for p in sae.parameters()]).norm().item()

    big, small = with_grads(1.0), with_grads(1e-6)
    before = norm(small)
    clip_grad(big, 1.0)
    clip_grad(small, 1.0)
    assert norm(big) == pytest.approx(1.0 / 16, rel=1e-4) and norm(small) == pytest.approx(before)
    module = SAEModule(with_grads(1.0), [L1DecoderNorm(0.1)], torch.optim.Adam, total_steps=10, grad_clip=2.0)
    module.on_before_optimizer_step(None)  # where Lightning calls it: after backward, before the step
    assert norm(module.sae) == pytest.approx(2.0 / 16, rel=1e-4)
    unclipped = SAEModule(with_grads(1.0), [L1DecoderNorm(0.1)], torch.optim.Adam, total_steps=10, grad_clip=None)
    unclipped.on_before_optimizer_step(None)
    assert norm(unclipped.sae) == pytest.approx(norm(with_grads(1.0)))
