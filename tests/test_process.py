"""Forward process (theory §3), natural level and bridge (3.1): the identities, numerically, per family."""

import numpy as np
import pytest

from pyrflow_ref.gaussian import LinearPatchEncoder
from pyrflow_ref.natural import bridge_velocity, natural_velocity, per_frame, scale_c, sigma_from_varsigma, varsigma
from pyrflow_ref.process import (
    StageProcess,
    clean_pyramid_latent,
    clean_pyramid_pixel,
    coarse_signal_up,
    forward_sample,
    model_velocity,
    x0_from_velocity,
)
from pyrflow_ref.resample import TRANSITION_FAMILIES, Pyramid
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

SHAPE = (2, 3, 9, 8, 8)
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)


@pytest.fixture(params=TRANSITION_FAMILIES)
def pyramid(request):
    return Pyramid.uniform(request.param, (2, 2, 2), 3)


def stage_points(windows):
    for i in range(windows.num_stages):
        sc, sn = windows.sigma_c(i), windows.sigma_n(i)
        for r in (0.0, 0.3, 1.0):
            yield i, sc + r * (sn - sc), r


def forward_points(pyramid, seed):
    """``(x0s, stage, sigma, r, eps, x, v)`` at the :func:`stage_points` of a random clean pyramid of ``SHAPE``."""
    rng = np.random.default_rng(seed)
    x0s = clean_pyramid_latent(rng.standard_normal(SHAPE), pyramid)
    for i, sigma, r in stage_points(WINDOWS):
        eps = rng.standard_normal(x0s[i].shape)
        x, v = forward_sample(x0s, eps, sigma, i, WINDOWS, pyramid)
        yield x0s, i, sigma, r, eps, x, v


def test_bands_follow_spec(pyramid):
    """Property 1 (low band is plain RF) and 2 (noise coefficient sigma in both bands, high band fades)."""
    for x0s, i, sigma, r, eps, x, v in forward_points(pyramid, seed=0):
        sc, sn = WINDOWS.sigma_c(i), WINDOWS.sigma_n(i)
        if i < 2:
            transition = pyramid.transitions[i]
            p, h = transition.project, transition.high
            np.testing.assert_allclose(p(x), (1 - sigma) * p(x0s[i]) + sigma * p(eps), atol=1e-12)
            np.testing.assert_allclose(h(x), (1 - r) * (1 - sc) * h(x0s[i]) + sigma * h(eps), atol=1e-12)
            kappa = (1 - sc) / (sn - sc)
            np.testing.assert_allclose(v, eps - p(x0s[i]) - kappa * h(x0s[i]), atol=1e-12)
        else:  # coarsest: y_n = eps
            np.testing.assert_allclose(x, (1 - r) * (1 - sc) * x0s[i] + sigma * eps, atol=1e-12)
        # the target is the derivative of the path for fixed (x0, eps)
        d = 1e-6
        lo, hi = max(sc, sigma - d), min(sn, sigma + d)
        xl, _ = forward_sample(x0s, eps, lo, i, WINDOWS, pyramid)
        xh, _ = forward_sample(x0s, eps, hi, i, WINDOWS, pyramid)
        np.testing.assert_allclose((xh - xl) / (hi - lo), v, atol=1e-7)


def test_x0_decode_is_exact(pyramid):
    for x0s, i, sigma, _, _, x, v in forward_points(pyramid, seed=1):
        project = pyramid.transitions[i].project if i < 2 else None
        np.testing.assert_allclose(
            x0_from_velocity(x, v, sigma, WINDOWS.sigma_c(i), WINDOWS.sigma_n(i), project), x0s[i], atol=1e-10
        )


def test_single_stage_is_wan():
    """Property 5: S = 1 gives x = (1 - sigma) x0 + sigma eps and target eps - x0."""
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((2, *SHAPE))
    sigma = np.array([0.2, 0.9])
    x, v = forward_sample([x0], eps, sigma, 0, StageWindows(()), Pyramid(()))
    s = sigma[:, None, None, None, None]
    np.testing.assert_allclose(x, (1 - s) * x0 + s * eps, atol=1e-15)
    np.testing.assert_allclose(v, eps - x0, atol=1e-15)


def test_transition_matches_next_stage_start(pyramid):
    """Property 3: up_noisy(y_c^(i+1), sigma_c^(i+1)) has the mean and covariance of y_n^(i)."""
    rng = np.random.default_rng(3)
    x0s = clean_pyramid_latent(rng.standard_normal((1, 1, 5, 4, 4)), pyramid)
    for i in range(2):
        s = WINDOWS.sigma_c(i + 1)
        transition = pyramid.transitions[i]
        fine, coarse = x0s[i].shape, x0s[i + 1].shape
        nf, nc = int(np.prod(fine)), int(np.prod(coarse))
        # noise part of up_noisy as a matrix applied to [eps_coarse; w]
        a = transition.up(s * np.eye(nc).reshape(nc, *coarse[1:]), (nc, *fine[1:])).reshape(nc, nf)
        b = s * transition.high(np.eye(nf).reshape(nf, *fine[1:])).reshape(nf, nf)
        np.testing.assert_allclose(a.T @ a + b.T @ b, WINDOWS.sigma_n(i) ** 2 * np.eye(nf), atol=1e-12)
        mean = transition.up((1 - s) * x0s[i + 1], fine)
        np.testing.assert_allclose(mean, (1 - WINDOWS.sigma_n(i)) * coarse_signal_up(x0s, i, pyramid), atol=1e-12)


def test_definition_2_pixel_pyramid(pyramid):
    """Definition 2: encode each pixel stage, gain to orthonormal units; the generic x0 decode holds."""
    rng = np.random.default_rng(4)
    enc = LinearPatchEncoder(rng.standard_normal((2, 3, 2, 2)) / 3)
    pix = Pyramid.uniform("avgpool", (2, 2, 2), 3)
    video = rng.standard_normal((1, 3, 9, 16, 16))
    x0s = clean_pyramid_pixel(video, pyramid, enc, pix)
    assert [x.shape for x in x0s] == [(1, 2, 9, 8, 8), (1, 2, 5, 4, 4), (1, 2, 3, 2, 2)]
    # a constant video: Definition 2 equals Definition 1 (gain g_i exactly compensates pooling)
    const = np.ones_like(video)
    d2 = clean_pyramid_pixel(const, pyramid, enc, pix)
    d1 = clean_pyramid_latent(enc(const), pyramid)
    for a, b in zip(d1, d2):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # x - sigma v = ((1 - sc) sn x0 - (1 - sn) sc up(x0^(i+1))) / (sn - sc) for any clean pyramid
    i, sigma = 1, 0.7
    sc, sn = WINDOWS.sigma_c(i), WINDOWS.sigma_n(i)
    eps = rng.standard_normal(x0s[i].shape)
    x, v = forward_sample(x0s, eps, sigma, i, WINDOWS, pyramid)
    u = coarse_signal_up(x0s, i, pyramid)
    np.testing.assert_allclose(x - sigma * v, ((1 - sc) * sn * x0s[i] - (1 - sn) * sc * u) / (sn - sc), atol=1e-12)


def test_varsigma_natural_form_and_bridge():
    rng = np.random.default_rng(5)
    g = np.array([2.0, 2 * np.sqrt(2), 2 * np.sqrt(2)])  # frame 0 and the rest
    sigma = np.array([0.05, 0.5, 0.97])
    a0, eps = rng.standard_normal((2, 3, 2, 3, 4, 4))
    s, gg = per_frame(sigma, g)
    x = (1 - s) * gg * a0 + s * eps
    vs = varsigma(s, gg)
    np.testing.assert_allclose(x / scale_c(s, gg), (1 - vs) * a0 + vs * eps, atol=1e-14)
    np.testing.assert_allclose(bridge_velocity(x, s, gg, eps - a0), eps - gg * a0, atol=1e-13)
    np.testing.assert_allclose(natural_velocity(x, s, gg, eps - gg * a0), eps - a0, atol=1e-13)
    grid = np.linspace(0, 1, 101)
    for gain in (0.2, 1.0, 8.0):
        v = varsigma(grid, gain)
        assert v[0] == 0 and v[-1] == 1 and np.all(np.diff(v) > 0)
        np.testing.assert_allclose(sigma_from_varsigma(v, gain), grid, atol=1e-15)
    np.testing.assert_allclose(varsigma(grid, 1.0), grid)


def test_forward_sample_rejects_sigma_outside_window():
    x0s = clean_pyramid_latent(np.zeros(SHAPE), Pyramid.uniform("haar", (2, 2, 2), 3))
    with pytest.raises(ValueError, match=r"outside stage 0's window \[0.0, 0.5555"):
        forward_sample(x0s, np.zeros(SHAPE), 0.9, 0, WINDOWS, Pyramid.uniform("haar", (2, 2, 2), 3))


# ------------------------------------------------------------------------------ StageProcess
def dense(fn, shape):
    """The matrix of a linear map on one ``(C, F, H, W)`` sample."""
    n = int(np.prod(shape))
    return fn(np.eye(n).reshape(n, *shape)).reshape(n, n).T


def test_stage_process_is_the_forward_process(pyramid):
    """Sample and target equal forward_sample's (Definition 1), M is explicit, eps and x0 decode exactly."""
    rng = np.random.default_rng(5)
    x0s = clean_pyramid_latent(rng.standard_normal(SHAPE), pyramid)
    for i in range(3):
        proc = StageProcess.pyramidal(pyramid, WINDOWS, i, x0s[i].shape[-3])
        assert (proc.sigma_c, proc.sigma_n, proc.project is None) == (WINDOWS.sigma_c(i), WINDOWS.sigma_n(i), i == 2)
        np.testing.assert_array_equal(proc.gain, pyramid.gain(i, x0s[i].shape[-3]))
        eps = rng.standard_normal(x0s[i].shape)
        sigma = proc.sigma(np.array([0.25, 0.8]))
        np.testing.assert_allclose(proc.rho(sigma), [0.25, 0.8], atol=1e-15)
        x, v = forward_sample(x0s, eps, sigma, i, WINDOWS, pyramid)
        np.testing.assert_array_equal(proc.sample(x0s[i], eps, sigma), x)
        np.testing.assert_array_equal(proc.target(x0s[i], eps), v)
        np.testing.assert_array_equal(proc.forward(x0s[i], eps, sigma)[1], v)
        s = sigma[:, None, None, None, None]
        np.testing.assert_allclose(proc.apply_m(x0s[i], sigma) + s * eps, x, atol=1e-12)
        np.testing.assert_allclose(proc.eps(x, x0s[i], sigma), eps, atol=1e-12)
        np.testing.assert_allclose(proc.x0_from_velocity(x, v, sigma), x0s[i], atol=1e-10)


def test_stage_process_mtm_band_weights(pyramid):
    """M^T M = (1 - sigma)^2 P + ((1 - rho)(1 - sigma_c))^2 (I - P) as a dense matrix (stage 1)."""
    shape = (1, 5, 4, 4)
    proc = StageProcess.pyramidal(pyramid, WINDOWS, 1, shape[1])
    sigma = proc.sigma(0.4)
    m = dense(lambda b: proc.apply_m(b, sigma), shape)
    d = np.random.default_rng(6).standard_normal((1, *shape))
    mtm_d = (m.T @ m @ d.reshape(-1)).reshape(d.shape)
    np.testing.assert_allclose(proc.apply_mtm(d, sigma), mtm_d, atol=1e-12)
    np.testing.assert_allclose(proc.apply_mtm(d, sigma, "low"), mtm_d / (1 - sigma) ** 2, atol=1e-12)
    low, high = proc.band_weights(sigma)
    assert low == pytest.approx((1 - sigma) ** 2) and high == pytest.approx((0.6 * (1 - proc.sigma_c)) ** 2)
    with pytest.raises(ValueError, match="band_norm"):
        proc.apply_mtm(d, sigma, "both")


def test_plain_stage_process_and_validation():
    rng = np.random.default_rng(7)
    x0, eps = rng.standard_normal((2, *SHAPE))
    plain = StageProcess.plain(2.0)
    np.testing.assert_allclose(plain.sample(x0, eps, 0.3), 0.7 * x0 + 0.3 * eps, atol=1e-15)
    np.testing.assert_allclose(plain.target(x0, eps), eps - x0, atol=1e-15)
    np.testing.assert_array_equal(plain.frame_gain(3), [2.0, 2.0, 2.0])
    x_nat, t = plain.natural_input(plain.sample(x0, eps, 0.3), 0.3)
    np.testing.assert_allclose(x_nat, (0.7 * x0 + 0.3 * eps) / (2 * 0.7 + 0.3), atol=1e-15)
    np.testing.assert_allclose(t, 1000 * 0.3 / (0.3 + 2 * 0.7))

    def model(xn, tt, cond):
        return 0.5 * xn + tt[:, None, :, None, None] / 1000

    x = plain.sample(x0, eps, 0.3)
    np.testing.assert_array_equal(plain.velocity(model, x, 0.3), model_velocity(model, x, 0.3, np.full(9, 2.0)))
    np.testing.assert_array_equal(plain.denoise(model, x, 0.3), x - 0.3 * plain.velocity(model, x, 0.3))
    with pytest.raises(ValueError, match="needs the projection"):
        StageProcess(0.3, 0.7)
    with pytest.raises(ValueError, match="sigma_c < sigma_n"):
        StageProcess(0.5, 0.5)
