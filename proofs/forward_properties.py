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
"""

import sympy as sp

from ._core import assert_matrix_equal, derivation

P = sp.diag(1, 0)
Q = sp.eye(2) - P  # I - P


def band(name):
    return sp.Matrix(sp.symbols(f"{name}_low {name}_high"))


def stage(sigma, sigma_c, sigma_n, x0, eps, u):
    """(x, y_c, y_n) of the stage at global level sigma."""
    rho = (sigma - sigma_c) / (sigma_n - sigma_c)
    y_c = (1 - sigma_c) * x0 + sigma_c * eps
    y_n = (1 - sigma_n) * u + sigma_n * eps
    return (1 - rho) * y_c + rho * y_n, y_c, y_n


def prove():
    sigma, sigma_c, sigma_n = sp.symbols("sigma sigma_c sigma_n")
    x0, eps, u = band("x0"), band("eps"), band("u")
    d = sigma_n - sigma_c
    rho = (sigma - sigma_c) / d
    kappa = (1 - sigma_c) / d

    x, y_c, y_n = stage(sigma, sigma_c, sigma_n, x0, eps, P * x0)  # Definition 1
    assert_matrix_equal(P * x, (1 - sigma) * P * x0 + sigma * P * eps, "(1) P x = (1 - sigma) P x0 + sigma P eps")
    high = (1 - rho) * (1 - sigma_c) * Q * x0 + sigma * Q * eps
    assert_matrix_equal(Q * x, high, "(2) (I - P) x = (1 - rho)(1 - sigma_c)(I - P) x0 + sigma (I - P) eps")
    target = sp.diff(x, sigma)
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
    return derivation(
        "Stage forward process in bands (P = diag(1, 0)), Definition 1: up(x0^(i+1)) = P x0.",
        "(1) P x = (1 - sigma) P x0 + sigma P eps  [(1 - rho)(1 - sigma_c) + rho (1 - sigma_n) = 1 - sigma].",
        "(2) (I - P) x = (1 - rho)(1 - sigma_c)(I - P) x0 + sigma (I - P) eps  [(1 - rho) sigma_c + rho sigma_n = sigma]:"
        " noise coefficient sigma in both bands, high-band signal fades linearly in rho.",
        "target = dx/dsigma = (y_n - y_c)/(sigma_n - sigma_c) = eps - P x0 - kappa (I - P) x0, kappa = (1 - sigma_c)/(sigma_n - sigma_c).",
        "Coarsest stage (y_n = eps): the same formulas at sigma_n = 1, target = eps - x0 (holds for any u).",
        "(5) S = 1 (sigma_c = 0, sigma_n = 1, P = I): x = (1 - sigma) x0 + sigma eps, target = eps - x0 (Wan).",
        "Decode: x - sigma target = (sigma_n y_c - sigma_c y_n)/(sigma_n - sigma_c) = P x0 + k (I - P) x0,"
        " k = (1 - sigma_c) sigma_n/(sigma_n - sigma_c), independent of sigma.",
        "Any u: x - sigma target = ((1 - sigma_c) sigma_n x0 - (1 - sigma_n) sigma_c u)/(sigma_n - sigma_c).",
        "Definition 2 (u != P x0): (2)'s noise coefficient sigma still holds; (1) gains rho (1 - sigma_n) P (u - x0),"
        " so it holds exactly only when P u = P x0.",
    )
