"""Pyramidal forward process: theory §3 properties 1, 2, 5, the regression target, the x0 decode.

Band algebra: every operator here is a scalar combination of P and I - P, which act on the two
bands of T = [L; H] independently, so a vector is represented by its (low, high) parts and
P = diag(1, 0). Within stage i (sigma_c < sigma_n), rho = (sigma - sigma_c) / (sigma_n - sigma_c),
y_c = (1 - sigma_c) x0 + sigma_c eps, y_n = (1 - sigma_n) u + sigma_n eps with u = up(x0^(i+1)),
x = (1 - rho) y_c + rho y_n. Definition 1 gives u = P x0. Then
(1) P x = (1 - sigma) P x0 + sigma P eps;
(2) (I - P) x = (1 - rho)(1 - sigma_c)(I - P) x0 + sigma (I - P) eps;
target = dx/dsigma = (y_n - y_c)/(sigma_n - sigma_c) = eps - P x0 - kappa (I - P) x0,
kappa = (1 - sigma_c)/(sigma_n - sigma_c); the coarsest stage (y_n = eps, sigma_n = 1) is the same
formula; (5) S = 1 is Wan: x = (1 - sigma) x0 + sigma eps, target = eps - x0.
Decode: x - sigma target = P x0 + k (I - P) x0, k = (1 - sigma_c) sigma_n / (sigma_n - sigma_c),
and for arbitrary u: x - sigma target = ((1 - sigma_c) sigma_n x0 - (1 - sigma_n) sigma_c u)/(sigma_n - sigma_c).
y_c, y_n and the target are pyrflow_ref.process's own functions on SymPy values; its forward_sample
and x0_from_velocity (float64 only) equal these closed forms on random stages of Haar and DCT pyramids.
"""

import numpy as np
import sympy as sp

from pyrflow_ref import process, resample, windows

from ._core import assert_close, assert_matrix_equal, derivation

P = sp.diag(1, 0)
Q = sp.eye(2) - P  # I - P
SHAPE = (2, 2, 5, 4, 4)  # (B, C, F, H, W): three stages (5, 4, 4) -> (3, 2, 2) -> (2, 1, 1)
DRAWS = 10  # random windows per family, each sampled at every stage


def band(name):
    return sp.Matrix(sp.symbols(f"{name}_low {name}_high"))


def stage(sigma, sigma_c, sigma_n, x0, eps, u):
    """(x, y_c, y_n) of the stage at global level sigma, with pyrflow_ref's y_c and y_n."""
    rho = (sigma - sigma_c) / (sigma_n - sigma_c)
    y_c = process.y_c(x0, eps, sigma_c)
    y_n = process.y_n(u, eps, sigma_n)
    return (1 - rho) * y_c + rho * y_n, y_c, y_n


def _check_code(rng, coefficients):
    """pyrflow_ref.process.forward_sample and x0_from_velocity against the proven closed forms, float64.

    ``coefficients(sigma, sigma_c, sigma_n)`` -> (high-band signal coefficient of x, kappa, decode
    coefficients of x0 and u), lambdified from the exact results.
    """
    for family in ("haar", "dct"):
        pyramid = resample.Pyramid.uniform(family, (2, 2, 2), num_stages=3)
        for _ in range(DRAWS):
            w = windows.StageWindows([rng.uniform(0.1, 0.5), rng.uniform(0.6, 0.95)])
            x0s = process.clean_pyramid_latent(rng.standard_normal(SHAPE), pyramid)  # Definition 1
            independent = [rng.standard_normal(np.shape(x)) for x in x0s]  # Definition 2: any u
            for i in range(3):
                sc, sn = w.sigma_c(i), w.sigma_n(i)
                sigma = rng.uniform(sc, sn, SHAPE[0])
                b = sigma.reshape(-1, 1, 1, 1, 1)
                high, kappa, on_x0, on_u = coefficients(b, sc, sn)
                eps = rng.standard_normal(x0s[i].shape)
                project = pyramid.transitions[i].project if i < 2 else None
                # At the coarsest stage (sigma_n = 1) high = 1 - sigma and kappa = 1, so P drops out.
                x0, px0 = x0s[i], project(x0s[i]) if project else x0s[i]
                what = f"{family} stage {i}, window [{sc:.3f}, {sn:.3f}]"
                x, t = process.forward_sample(x0s, eps, sigma, i, w, pyramid)
                assert_close(x, (1 - b) * px0 + high * (x0 - px0) + b * eps, f"{what}: forward_sample x (1), (2)")
                assert_close(t, eps - px0 - kappa * (x0 - px0), f"{what}: forward_sample target")
                assert_close(process.x0_from_velocity(x, t, sigma, sc, sn, project), x0, f"{what}: x0 decode")
                xg, tg = process.forward_sample(independent, eps, sigma, i, w, pyramid)
                u = process.coarse_signal_up(independent, i, pyramid)
                assert_close(xg - b * tg, on_x0 * independent[i] + on_u * u, f"{what}: general decode")
    x0, eps, sigma = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE), rng.uniform(0, 1, SHAPE[0])
    b = sigma.reshape(-1, 1, 1, 1, 1)
    x, t = process.forward_sample([x0], eps, sigma, 0, windows.StageWindows(()), resample.Pyramid(()))
    assert_close(x, (1 - b) * x0 + b * eps, "S = 1: forward_sample x = (1 - sigma) x0 + sigma eps")
    assert_close(t, eps - x0, "S = 1: forward_sample target = eps - x0")


def prove():
    sigma, sigma_c, sigma_n = sp.symbols("sigma sigma_c sigma_n")
    x0, eps, u = band("x0"), band("eps"), band("u")
    d = sigma_n - sigma_c
    rho = (sigma - sigma_c) / d
    kappa = (1 - sigma_c) / d

    _, y_c, y_n = stage(sigma, sigma_c, sigma_n, x0, eps, u)
    assert_matrix_equal(y_c, (1 - sigma_c) * x0 + sigma_c * eps, "pyrflow_ref y_c = (1 - sigma_c) x0 + sigma_c eps")
    assert_matrix_equal(y_n, (1 - sigma_n) * u + sigma_n * eps, "pyrflow_ref y_n = (1 - sigma_n) u + sigma_n eps")

    x, y_c, y_n = stage(sigma, sigma_c, sigma_n, x0, eps, P * x0)  # Definition 1
    assert_matrix_equal(P * x, (1 - sigma) * P * x0 + sigma * P * eps, "(1) P x = (1 - sigma) P x0 + sigma P eps")
    high = (1 - rho) * (1 - sigma_c) * Q * x0 + sigma * Q * eps
    assert_matrix_equal(Q * x, high, "(2) (I - P) x = (1 - rho)(1 - sigma_c)(I - P) x0 + sigma (I - P) eps")
    target = sp.diff(x, sigma)
    assert_matrix_equal(target, process.target(y_c, y_n, sigma_c, sigma_n), "pyrflow_ref target = dx/dsigma")
    assert_matrix_equal(target, (y_n - y_c) / d, "target = dx/dsigma = (y_n - y_c)/(sigma_n - sigma_c)")
    assert_matrix_equal(target, eps - P * x0 - kappa * Q * x0, "target = eps - P x0 - kappa (I - P) x0")
    k = (1 - sigma_c) * sigma_n / d
    decoded = x - sigma * target
    assert_matrix_equal(decoded, P * x0 + k * Q * x0, "x - sigma target = P x0 + k (I - P) x0")
    assert_matrix_equal(sp.diff(decoded, sigma), sp.zeros(2, 1), "decode independent of sigma")

    # Coarsest stage: y_n = eps whatever u is, i.e. sigma_n = 1.
    xc, _, y_nc = stage(sigma, sigma_c, 1, x0, eps, u)
    assert_matrix_equal(y_nc, eps, "coarsest: y_n = eps at sigma_n = 1")
    assert_matrix_equal(P * xc, (1 - sigma) * P * x0 + sigma * P * eps, "coarsest (1)")
    assert_matrix_equal(Q * xc, high.subs(sigma_n, 1), "coarsest (2)")
    coarse_target = (eps - P * x0 - kappa * Q * x0).subs(sigma_n, 1)
    assert_matrix_equal(sp.diff(xc, sigma), coarse_target, "coarsest target = general formula at sigma_n = 1")
    assert_matrix_equal(coarse_target, eps - x0, "coarsest target = eps - x0")

    # (5) S = 1: one stage [0, 1], P = I (no high band).
    x1, _, _ = stage(sigma, 0, 1, x0, eps, x0)
    assert_matrix_equal(x1, (1 - sigma) * x0 + sigma * eps, "(5) S = 1: x = (1 - sigma) x0 + sigma eps")
    assert_matrix_equal(sp.diff(x1, sigma), eps - x0, "(5) S = 1: target = eps - x0 (Wan)")

    # Without Definition 1 (e.g. Definition 2), u arbitrary.
    xg, _, _ = stage(sigma, sigma_c, sigma_n, x0, eps, u)
    decoded_g = xg - sigma * sp.diff(xg, sigma)
    general = ((1 - sigma_c) * sigma_n * x0 - (1 - sigma_n) * sigma_c * u) / d
    assert_matrix_equal(decoded_g, general, "general decode x - sigma target")
    mismatch = rho * (1 - sigma_n) * P * (u - x0)
    assert_matrix_equal(P * xg, (1 - sigma) * P * x0 + sigma * P * eps + mismatch, "(1) with general u")
    assert_matrix_equal(sp.diff(xg, eps[0]), sigma * P * sp.ones(2, 1), "noise coefficient sigma, low band, any u")
    assert_matrix_equal(sp.diff(xg, eps[1]), sigma * Q * sp.ones(2, 1), "noise coefficient sigma, high band, any u")

    proven = (sp.diff(high[1], x0[1]), kappa, sp.diff(general[0], x0[0]), sp.diff(general[0], u[0]))
    _check_code(np.random.default_rng(0), sp.lambdify((sigma, sigma_c, sigma_n), proven, "numpy"))
    return derivation(
        "Stage forward process in bands (P = diag(1, 0)), Definition 1: up(x0^(i+1)) = P x0.",
        "(1) P x = (1 - sigma) P x0 + sigma P eps  [(1 - rho)(1 - sigma_c) + rho (1 - sigma_n) = 1 - sigma].",
        "(2) (I - P) x = (1 - rho)(1 - sigma_c)(I - P) x0 + sigma (I - P) eps"
        "  [(1 - rho) sigma_c + rho sigma_n = sigma]:"
        " noise coefficient sigma in both bands, high-band signal fades linearly in rho.",
        "pyrflow_ref y_c, y_n, target (SymPy values): target = dx/dsigma = (y_n - y_c)/(sigma_n - sigma_c)"
        " = eps - P x0 - kappa (I - P) x0, kappa = (1 - sigma_c)/(sigma_n - sigma_c).",
        "Coarsest stage (y_n = eps): the same formulas at sigma_n = 1, target = eps - x0 (holds for any u).",
        "(5) S = 1 (sigma_c = 0, sigma_n = 1, P = I): x = (1 - sigma) x0 + sigma eps, target = eps - x0 (Wan).",
        "Decode: x - sigma target = (sigma_n y_c - sigma_c y_n)/(sigma_n - sigma_c) = P x0 + k (I - P) x0,"
        " k = (1 - sigma_c) sigma_n/(sigma_n - sigma_c), independent of sigma.",
        "Any u: x - sigma target = ((1 - sigma_c) sigma_n x0 - (1 - sigma_n) sigma_c u)/(sigma_n - sigma_c).",
        "Definition 2 (u != P x0): (2)'s noise coefficient sigma still holds; (1) gains rho (1 - sigma_n) P (u - x0),"
        " so it holds exactly only when P u = P x0.",
        f"pyrflow_ref forward_sample, x0_from_velocity: these closed forms (1e-12) on {DRAWS} random windows per"
        f" family of 3-stage Haar and DCT pyramids {SHAPE}, every stage, Definitions 1 and 2, and S = 1.",
    )
