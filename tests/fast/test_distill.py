"""Distillation components: DMD (OT / PT / PT*), adversarial distillation, LoRA on the student."""

import numpy as np
import pytest
import torch
from wan_fixtures import random_wan

from pyrflow_fast.distill.adversarial import (
    Discriminator,
    DiscriminatorHead,
    FeatureExtractor,
    generator_adversarial_loss,
    hinge_loss,
    reconstruction_loss,
)
from pyrflow_fast.distill.adversarial import generator_loss as adv_generator_loss
from pyrflow_fast.distill.config import DistillConfig, DistillSection
from pyrflow_fast.distill.dmd import (
    DMD,
    DMDVariant,
    critic_loss,
    dmd_gradient,
    generator_loss,
    regression_loss,
    score_sigmas,
    variant_process,
)
from pyrflow_fast.distill.lora import AdaptersOff, student_lora
from pyrflow_fast.natural import bridge_velocity, per_frame, varsigma
from pyrflow_fast.process import StageProcess
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.samplers import guidance_combine
from pyrflow_ref import process as ref_process
from pyrflow_ref.resample import Pyramid as RefPyramid
from pyrflow_ref.windows import StageWindows

WINDOWS = StageWindows((0.3, 0.7))
HAAR = Pyramid.uniform("haar", (2, 2, 2), num_stages=3)
FULL = (2, 2, 5, 8, 8)  # (B, C, F, H, W): F = 1 + 4 under the first-frame rule
SHAPES = HAAR.shapes(FULL)  # stage shapes, finest first: F x H x W = 5x8x8, 3x4x4, 2x2x2
SHAPE = SHAPES[1]


def dense_projection(transition, shape):
    """The matrix of P = L^T L of a transition on one (F, H, W) channel."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
    return transition.project(basis).reshape(n, n).T


# ----------------------------------------------------------------------------- config and draws
def test_variant_parsing_and_the_distill_section_as_dmd_options():
    assert DMDVariant.parse("OT") is DMDVariant.OT
    assert DMDVariant.parse(" pt ") is DMDVariant.PT
    assert DMDVariant.parse("ptstar") is DMDVariant.PT_STAR
    with pytest.raises(ValueError, match="unknown DMD variant 'dmd2'"):
        DMDVariant.parse("dmd2")
    fn = constant_model(0.0)
    default = DMD(fn, fn)
    assert default.variant is DMDVariant.PT_STAR and default.config == DistillSection()
    c = default.config
    assert (c.guidance, c.critic_ratio, c.regression_weight, c.sigma_min, c.sigma_max) == (4.5, 5, 0.01, 0.02, 0.98)
    section = DistillConfig.from_dict({"distill": {"score_shift": 3.0, "sigma_min": 0.1, "band_norm": "none"}}).distill
    dmd = DMD(fn, fn, "pt_star", section)
    assert dmd.variant is DMDVariant.PT_STAR and dmd.config is section
    for bad in (
        {"sigma_min": 0.5, "sigma_max": 0.4},
        {"score_shift": 0.0},
        {"critic_ratio": 0},
        {"regression_weight": -1.0},
        {"band_norm": "high"},
    ):  # the one place that checks them
        with pytest.raises(ValueError, match="distill."):
            DistillConfig.from_dict({"distill": bad})


def test_score_sigmas_are_shifted_uniform_and_clamped():
    u = torch.rand(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    s = score_sigmas(4000, shift=5.0, rng=torch.Generator().manual_seed(3)).numpy()
    expected = np.clip(5 * u / (1 + 4 * u), 0.02, 0.98)  # Wan's shift, then CausVid's clamp
    np.testing.assert_allclose(s, expected, rtol=1e-13)
    assert s.min() == 0.02 and s.max() == 0.98
    # a stage window: the window's piece of the same shifted distribution
    w = score_sigmas(4000, shift=5.0, window=(0.3, 0.7), rng=torch.Generator().manual_seed(3)).numpy()
    ulo, uhi = 0.3 / (0.3 + 5 * 0.7), 0.7 / (0.7 + 5 * 0.3)
    uu = ulo + (uhi - ulo) * u
    np.testing.assert_allclose(w, 5 * uu / (1 + 4 * uu), rtol=1e-13)
    # shift 1 (the clamp to [0, 1] a no-op): exactly the uniform draw the teacher finetunes made before they had a shift
    one = score_sigmas(4000, shift=1.0, window=(0.3, 0.7), clamp=(0.0, 1.0), rng=torch.Generator().manual_seed(3))
    assert np.array_equal(one.numpy(), 0.3 + (0.7 - 0.3) * u)
    with pytest.raises(ValueError, match="no admissible"):
        score_sigmas(2, window=(0.985, 1.0))


def test_guidance_combine_standard_form():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert guidance_combine(u, c, 5.0).tolist() == [11.0, 8.0]
    assert torch.equal(guidance_combine(u, c, 1.0), c) and torch.equal(guidance_combine(u, c, 0.0), u)


# ------------------------------------------------------------------------ losses, hand-computed
def test_generator_loss_hand_computed():
    x_gen = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 3.0, -2.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5, 2.0, 0.0, 0.0], [1.0, -1.0, 2.0, -2.0]], dtype=torch.float64)
    real = torch.tensor([[0.0, 1.0, -1.0, 1.5], [0.5, 0.5, 2.0, -1.0]], dtype=torch.float64)
    xg, fk, rl = (t.numpy() for t in (x_gen, fake, real))
    norm = np.abs(xg - rl).mean(axis=1, keepdims=True)  # [0.75, 0.75]
    grad_np = (fk - rl) / norm
    x = x_gen.reshape(2, 1, 1, 2, 2).clone().requires_grad_()
    grad = dmd_gradient(x, fake.reshape(x.shape), real.reshape(x.shape))
    np.testing.assert_allclose(grad.reshape(2, 4).numpy(), grad_np, rtol=1e-15)
    np.testing.assert_allclose(grad.reshape(2, 4).numpy()[0], [2 / 3, 4 / 3, 4 / 3, -2.0], rtol=1e-15)
    loss = generator_loss(x, grad)
    assert loss.item() == pytest.approx(0.5 * np.mean(grad_np**2), rel=1e-15)
    loss.backward()  # mean over all 8 elements: d loss / d x_gen = grad / 8
    np.testing.assert_allclose(x.grad.reshape(2, 4).numpy(), grad_np / 8, rtol=1e-15)


def test_regression_and_critic_losses_hand_computed():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 5.0]])
    assert regression_loss(a, b).item() == pytest.approx((1 + 0 + 4 + 1) / 4)
    assert critic_loss(a.half(), b).dtype == torch.float32
    assert critic_loss(a, b).item() == pytest.approx(1.5)


def constant_model(value):
    """A natural-scale 'backbone' that predicts the same natural velocity everywhere."""

    def model(x_nat, t, cond):
        return torch.full_like(x_nat, value)

    return model


def test_critic_flow_matching_loss_plain_hand_computed():
    x0 = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64).reshape(1, 1, 1, 2, 2)
    gen = torch.Generator().manual_seed(7)
    dmd = DMD(constant_model(0.25), constant_model(0.25), "ot", DistillSection(score_shift=1.0))
    loss = dmd.critic_loss(x0, StageProcess.plain(), rng=gen)
    gen = torch.Generator().manual_seed(7)  # same draws: sigma first, then eps
    score_sigmas(1, shift=1.0, rng=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    expected = np.mean((0.25 - (eps - x0).numpy()) ** 2)  # target eps - x0, g = 1: dx/dsigma = v_hat
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_critic_target_pyramidal_matches_reference():
    rng = np.random.default_rng(0)
    ref_pyr = RefPyramid.uniform("haar", (2, 2, 2), num_stages=3)
    x0s = ref_process.clean_pyramid_latent(rng.standard_normal(FULL), ref_pyr)
    x0, eps = x0s[1], rng.standard_normal(SHAPE)
    sigma = np.array([0.35, 0.6])
    x_ref, target_ref = ref_process.forward_sample(x0s, eps, sigma, 1, WINDOWS, ref_pyr)
    proc = StageProcess.pyramidal(HAAR, WINDOWS, 1, SHAPE[2])
    x = proc.sample(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(sigma))
    np.testing.assert_allclose(x.numpy(), x_ref, atol=1e-13)
    np.testing.assert_allclose(proc.target(torch.from_numpy(x0), torch.from_numpy(eps)).numpy(), target_ref, atol=1e-13)


# ------------------------------------------------------------------ PT: closed form, band weights
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_closed_form_eps_recovers_the_noise(stage):
    gen = torch.Generator().manual_seed(stage)
    x0 = torch.randn(SHAPES[stage], generator=gen, dtype=torch.float64)
    eps = torch.randn(SHAPES[stage], generator=gen, dtype=torch.float64)
    proc = StageProcess.pyramidal(HAAR, WINDOWS, stage, SHAPES[stage][2])
    sigma = torch.tensor(
        [proc.sigma_c + 0.2 * (proc.sigma_n - proc.sigma_c) + 1e-3, proc.sigma_n - 1e-3], dtype=torch.float64
    )
    x = proc.sample(x0, eps, sigma)
    torch.testing.assert_close(proc.eps(x, x0, sigma), eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(proc.apply_m(x0, sigma) + sigma.reshape(-1, 1, 1, 1, 1) * eps, x, rtol=0, atol=1e-13)


def test_pt_band_weights_equal_mtm_with_haar_p():
    proc = StageProcess.pyramidal(HAAR, WINDOWS, 1, SHAPE[2])
    pmat = dense_projection(HAAR.transitions[1], SHAPE[2:])
    n = pmat.shape[0]
    torch.testing.assert_close(pmat @ pmat, pmat, rtol=0, atol=1e-13)  # P^2 = P
    sigma = 0.45
    rho = (sigma - 0.3) / 0.4
    m = (1 - sigma) * pmat + (1 - rho) * (1 - 0.3) * (torch.eye(n, dtype=torch.float64) - pmat)
    d = torch.randn(1, 1, *SHAPE[2:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mtm_d = (m.T @ m @ d.reshape(n)).reshape(d.shape)
    torch.testing.assert_close(proc.apply_mtm(d, sigma, "none"), mtm_d, rtol=0, atol=1e-13)
    torch.testing.assert_close(proc.apply_mtm(d, sigma, "low"), mtm_d / (1 - sigma) ** 2, rtol=0, atol=1e-13)
    low, high = proc.band_weights(sigma)
    assert low.item() == pytest.approx((1 - sigma) ** 2) and high.item() == pytest.approx(((1 - rho) * 0.7) ** 2)
    # the coarsest stage (sigma_n = 1) has M = (1 - sigma) I: PT weighting is plain DMD there
    top = StageProcess.pyramidal(HAAR, WINDOWS, 2, SHAPES[2][2])
    assert top.project is None
    torch.testing.assert_close(top.apply_mtm(d, 0.8, "low"), d)


def make_models():
    """Two affine natural-scale backbones (teacher uses cond/uncond) with known outputs."""

    def real(x_nat, t, cond):
        return 0.3 * x_nat + (1.0 if cond is None else cond) * 0.1 + t[:, None, :, None, None] / 1000

    def fake(x_nat, t, cond):
        return -0.2 * x_nat + 0.05

    return real, fake


@pytest.mark.parametrize("stage", [0, 1])
def test_pt_star_equals_pt_without_the_weights(stage):
    real, fake = make_models()
    proc = StageProcess.pyramidal(HAAR, WINDOWS, stage, SHAPES[stage][2])
    x_gen = torch.randn(SHAPES[stage], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    outs = {}
    for v in ("pt", "pt*"):
        dmd = DMD(real, fake, v, DistillSection(guidance=3.0), uncond=torch.tensor(0.0))
        outs[v] = dmd.generator_loss(
            x_gen.clone().requires_grad_(), proc, torch.tensor(2.0), rng=torch.Generator().manual_seed(9)
        )
    pt, star = outs["pt"], outs["pt*"]
    assert torch.equal(pt.sigma, star.sigma) and torch.equal(pt.x0_real, star.x0_real)
    torch.testing.assert_close(pt.grad, proc.apply_mtm(star.grad, pt.sigma, "low"), rtol=1e-12, atol=1e-12)
    norm = (x_gen - star.x0_real).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(star.grad, (star.x0_fake - star.x0_real) / norm, rtol=1e-12, atol=0)
    assert not torch.allclose(pt.grad, star.grad)


def test_teacher_cfg_and_x0_decoding():
    real, fake = make_models()
    x_gen = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cond, uncond, w = torch.tensor(2.0), torch.tensor(0.0), 4.0
    for variant, proc in (
        ("ot", variant_process("ot", HAAR, WINDOWS, 1, SHAPE[2])),
        ("pt", variant_process("pt", HAAR, WINDOWS, 1, SHAPE[2])),
    ):
        dmd = DMD(real, fake, variant, DistillSection(guidance=w), uncond=uncond)
        out = dmd.generator_loss(x_gen.clone().requires_grad_(), proc, cond, rng=torch.Generator().manual_seed(4))
        gen = torch.Generator().manual_seed(4)
        sigma = dmd.sigmas(proc, SHAPE[0], gen)
        eps = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        x = proc.sample(x_gen, eps, sigma)
        x0_c, x0_u = proc.denoise(real, x, sigma, cond), proc.denoise(real, x, sigma, uncond)
        torch.testing.assert_close(out.x0_real, guidance_combine(x0_u, x0_c, w), rtol=1e-12, atol=1e-12)
        v = proc.velocity(fake, x, sigma)
        if variant == "ot":  # plain process: x0 = x - sigma v, window [0, 1], stage gain
            assert (proc.sigma_c, proc.sigma_n, proc.project) == (0.0, 1.0, None)
            torch.testing.assert_close(out.x0_fake, x - sigma.reshape(-1, 1, 1, 1, 1) * v)
        else:  # pyramidal decode: P d + (I - P) d / k
            d = x - sigma.reshape(-1, 1, 1, 1, 1) * v
            k = (1 - 0.3) * 0.7 / 0.4
            pd = HAAR.transitions[1].project(d)
            torch.testing.assert_close(out.x0_fake, pd + (d - pd) / k)
            assert bool(((sigma >= 0.3) & (sigma <= 0.7)).all())


def test_regression_term_weight():
    real, fake = make_models()
    proc = StageProcess.plain()
    x_gen = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_()
    target = torch.zeros(SHAPE, dtype=torch.float64)
    dmd = DMD(real, fake, "ot", DistillSection(guidance=1.0))
    out = dmd.generator_loss(x_gen, proc, x_teacher=target, rng=torch.Generator().manual_seed(1))
    assert out.regression.item() == pytest.approx(float((x_gen.detach() ** 2).mean()))
    assert out.total.item() == pytest.approx(out.dmd.item() + 0.01 * out.regression.item())
    assert dmd.generator_loss(x_gen, proc, rng=torch.Generator().manual_seed(1)).regression is None


def test_stage_process_validation():
    with pytest.raises(ValueError, match="needs the projection"):
        StageProcess(0.3, 0.7)
    with pytest.raises(ValueError, match="sigma_c < sigma_n"):
        StageProcess.plain().__class__(0.5, 0.5)
    with pytest.raises(ValueError, match="band_norm"):
        StageProcess.plain().apply_mtm(torch.ones(1, 1, 1, 1, 1), 0.5, "both")


# --------------------------------------------------------------- Gaussian toy with a known optimum
D = 3


def psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def w2_squared(m1, s1, m2, s2):
    """Squared 2-Wasserstein distance between two Gaussians (closed form)."""
    r = psd_sqrt(s2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * psd_sqrt(r @ s1 @ r)))


class GaussianScore:
    """Exact natural-velocity model of data N(mean, cov) under a stage process (gain 1, D channels).

    x = M x0 + sigma eps is jointly Gaussian, so E[x0 | x] = m + S M^T (M S M^T + sigma^2 I)^-1 (x - M m);
    the velocity is the one x0_from_velocity decodes to it: v = (x - K E[x0 | x]) / sigma with
    K = P + k (I - P).
    """

    def __init__(self, mean, cov, proc, pmat):
        self.m, self.s, self.proc, self.p = mean, cov, proc, pmat

    def __call__(self, x_nat, t, cond):
        sig = t[:, 0].to(torch.float64) / 1000  # gain 1: x_nat = x, t = 1000 sigma
        x = x_nat.reshape(-1, D).to(torch.float64)
        eye = torch.eye(D, dtype=torch.float64)
        if self.p is None:
            m, k = (1 - sig)[:, None, None] * eye, eye
        else:
            sc, sn = self.proc.sigma_c, self.proc.sigma_n
            beta = (1 - (sig - sc) / (sn - sc)) * (1 - sc)
            m = (1 - sig)[:, None, None] * self.p + beta[:, None, None] * (eye - self.p)
            k = self.p + (1 - sc) * sn / (sn - sc) * (eye - self.p)
        cov = m @ self.s @ m.transpose(1, 2) + (sig**2)[:, None, None] * eye
        x0 = self.m + (self.s @ m.transpose(1, 2) @ torch.linalg.solve(cov, (x - m @ self.m)[..., None]))[..., 0]
        return ((x - x0 @ k.T) / sig[:, None]).reshape(x_nat.shape)


@pytest.mark.parametrize("variant", ["ot", "pt", "pt*"])
def test_dmd_moves_a_gaussian_generator_to_the_teacher(variant):
    """Teacher = exact score of N(mu, Sigma); critic = exact score of the generator's Gaussian
    N(b, A A^T); the DMD gradient alone drives the linear generator x = A z + b to the teacher."""
    mu = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    chol = torch.tensor([[1.0, 0, 0], [0.5, 0.6, 0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    sigma_data = chol @ chol.T
    if variant == "ot":
        proc, pmat = StageProcess.plain(), None
    else:  # a two-band stage: P projects onto one direction
        u = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
        pmat = torch.outer(u, u)
        proc = StageProcess(0.3, 0.7, 1.0, lambda x: torch.einsum("ij,bj...->bi...", pmat, x))
    a = (0.3 * torch.eye(D, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.02)
    gen = torch.Generator().manual_seed(1)
    real = GaussianScore(mu, sigma_data, proc, pmat)
    config = DistillSection(guidance=1.0, score_shift=1.0)

    def distance():
        return w2_squared(b.detach().numpy(), (a @ a.T).detach().numpy(), mu.numpy(), sigma_data.numpy())

    history = [distance()]
    for step in range(200):
        fake = GaussianScore(b.detach().clone(), (a @ a.T).detach().clone(), proc, pmat)
        z = torch.randn(64, D, generator=gen, dtype=torch.float64)
        x_gen = (z @ a.T + b).reshape(64, D, 1, 1, 1)
        loss = DMD(real, fake, variant, config).generator_loss(x_gen, proc, rng=gen).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            history.append(distance())
    assert history[0] > 2.0
    assert all(later < earlier for earlier, later in zip(history, history[1:]))
    assert history[-1] < 1e-3 * history[0]


# ------------------------------------------------------------------------- adversarial distillation


def wan_inputs(cfg, batch=2, size=(3, 4, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, *size, generator=gen)
    return x, torch.tensor([600.0, 250.0])[:batch], torch.randn(batch, 5, cfg.text_dim, generator=gen)


def test_feature_extractor_shapes_and_values():
    model = random_wan("tiny-3layer", seed=2)
    x, t, ctx = wan_inputs(model.config)
    captured = {}
    handles = [model.blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o)) for i in range(3)]
    with torch.no_grad():
        model(x, t, ctx)
    for h in handles:
        h.remove()
    ext = FeatureExtractor(model, [1, 0])
    calls = []
    model.blocks[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        feats = ext(x, t, ctx)
    assert ext.blocks == (0, 1) and not calls  # the forward stopped after block 1
    assert [tuple(f.shape) for f in feats] == [(2, 48, 3, 2, 3)] * 2
    for f, i in zip(feats, (0, 1)):  # token (f, h, w) of block i, channels first
        assert torch.equal(f.permute(0, 2, 3, 4, 1).reshape(2, 3, 6, 48), captured[i])
    with pytest.raises(ValueError, match="feature blocks"):
        FeatureExtractor(model, [3])
    ext.train()
    assert not model.training


def test_hinge_and_generator_losses_hand_computed():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.0, 0.25])
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 1.25] -> 0.75
    assert hinge_loss(real, fake).item() == pytest.approx(5 / 6 + 0.75)
    assert generator_adversarial_loss(fake).item() == pytest.approx(11 / 12)
    x_gen = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    target = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert reconstruction_loss(x_gen, target).item() == pytest.approx(6 / 4)
    out = adv_generator_loss(fake, x_gen, target)
    assert out.adversarial.item() == pytest.approx(11 / 12) and out.reconstruction.item() == pytest.approx(1.5)
    assert out.total.item() == pytest.approx(1.0 * 11 / 12 + 2.0 * 1.5)
    assert adv_generator_loss(fake, x_gen, target, 0.5, 0.0).total.item() == pytest.approx(0.5 * 11 / 12)


def test_discriminator_head_branches():
    head = DiscriminatorHead(dim=32, num_features=2, hidden=8)
    feats = [torch.randn(2, 32, 3, 2, 3), torch.randn(2, 32, 3, 2, 3)]
    logits = head(feats)
    maps = head.branch_logits(feats)
    assert logits.shape == (2,) and [tuple(m.shape) for pair in maps for m in pair] == [(2, 1, 3, 2, 3)] * 4
    torch.testing.assert_close(logits, sum(s.mean((1, 2, 3, 4)) + t.mean((1, 2, 3, 4)) for s, t in maps))
    assert head.spatial[0][0].kernel_size == (1, 3, 3) and head.temporal[0][0].kernel_size == (3, 1, 1)
    with pytest.raises(ValueError, match="feature maps"):
        head(feats[:1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_the_head_and_the_generator_not_the_backbone(checkpointing):
    backbone = random_wan("tiny", seed=3)
    backbone.set_gradient_checkpointing(checkpointing)
    disc = Discriminator(backbone, blocks=[0, 1], hidden=8)
    disc.train()
    x_real, t, ctx = wan_inputs(backbone.config, seed=1)
    x_fake = torch.randn_like(x_real).requires_grad_()
    d_loss = hinge_loss(disc(x_real, t, ctx), disc(x_fake.detach(), t, ctx))
    d_loss.backward()
    assert all(p.grad is not None for p in disc.head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    disc.head.zero_grad()
    g = adv_generator_loss(disc(x_fake, t, ctx), x_fake, x_real)
    g.total.backward()
    assert x_fake.grad is not None and x_fake.grad.abs().sum() > 0  # through the frozen backbone
    assert all(p.grad is None for p in backbone.parameters())


# ---------------------------------------------------------------------------------- LoRA on the student
def test_student_lora_and_the_adapter_free_teacher():
    student = random_wan("tiny", seed=4)
    x, t, ctx = wan_inputs(student.config)
    with torch.no_grad():
        base = student(x, t, ctx)
    lora = student_lora(student, rank=2)
    teacher = AdaptersOff(lora, student)
    with torch.no_grad():
        assert torch.equal(student(x, t, ctx), base)  # B = 0: the student starts at the teacher
        for layer in lora.layers:
            layer.lora_B["default"].weight.normal_(std=0.1)
        assert not torch.allclose(student(x, t, ctx), base)
        assert torch.equal(teacher(x, t, ctx), base)
    assert lora.enabled
    student(x, t, ctx).square().mean().backward()
    assert all(p.grad is not None for p in lora.parameters())
    assert all(p.grad is None for p in student.parameters())


# ----------------------------------------------------------------- DMD on tiny Wan backbones, per-frame gains
def test_dmd_on_wan_backbones_at_a_pyramid_stage():
    teacher, critic = random_wan("tiny", seed=5), random_wan("tiny", seed=6)
    shapes = HAAR.shapes((2, 4, 5, 8, 8))
    proc = StageProcess.pyramidal(HAAR, WINDOWS, 1, shapes[1][2])
    assert proc.gain[0] != proc.gain[1]  # first-frame rule: frame 0 has its own gain
    ctx = torch.randn(2, 5, teacher.config.text_dim, generator=torch.Generator().manual_seed(0))
    x_gen = torch.randn(shapes[1], generator=torch.Generator().manual_seed(1)).requires_grad_()
    sigma = torch.tensor([0.5, 0.65])
    x = proc.sample(x_gen.detach(), torch.randn(shapes[1], generator=torch.Generator().manual_seed(4)), sigma)
    x_nat, t = proc.natural_input(x, sigma)
    assert t.shape == (2, 3) and t[0, 0] != t[0, 1]  # per-frame timesteps 1000 varsigma
    gain = torch.as_tensor(proc.gain, dtype=torch.float32)
    torch.testing.assert_close(t, 1000 * varsigma(sigma[:, None], gain[None, :]))
    with torch.no_grad():
        v = proc.velocity(teacher, x, sigma, ctx)
        expected = bridge_velocity(x, *per_frame(sigma, gain), teacher(x_nat, t, ctx))
    torch.testing.assert_close(v, expected)
    same = DMD(teacher, teacher, "pt", DistillSection(guidance=1.0))
    out = same.generator_loss(x_gen, proc, ctx, rng=torch.Generator().manual_seed(2))
    assert out.grad.abs().max() == 0  # fake = real: no DMD gradient
    dmd = DMD(teacher, critic, "pt", DistillSection(guidance=3.0), uncond=torch.zeros_like(ctx))
    out = dmd.generator_loss(x_gen, proc, ctx, x_teacher=torch.zeros(shapes[1]), rng=torch.Generator().manual_seed(2))
    out.total.backward()
    assert x_gen.grad.shape == x_gen.shape and x_gen.grad.abs().sum() > 0
    critic.requires_grad_(True)
    dmd.critic_loss(x_gen, proc, ctx, rng=torch.Generator().manual_seed(3)).backward()
    assert all(p.grad is not None for p in critic.blocks.parameters())
