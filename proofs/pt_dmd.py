"""PT-DMD's closed-form noise recovery and band weights (theory §4).

Statement: within a stage (Definition 1), x = M x0 + sigma eps with
M = (1 - sigma) P + (1 - rho)(1 - sigma_c)(I - P), the stage's x of the forward process; so
eps = (x - M x0) / sigma. M is symmetric and
M^T M = (1 - sigma)^2 P + ((1 - rho)(1 - sigma_c))^2 (I - P), using P^2 = P and P^T = P: the band
weights (1 - sigma)^2 and ((1 - rho)(1 - sigma_c))^2 of the back-propagated score difference.
The stage's x is pyrflow_ref's (process.y_c, y_n symbolically; forward_sample in float64).
"""

import numpy as np
import sympy as sp

from pyrflow_ref import process, resample, windows

from ._core import assert_close, assert_matrix_equal, derivation, vector
from ._resamplers import separable
from .forward_properties import SHAPE, stage


def _check_code(rng, weights, draws=10):
    """eps = (x - M x0) / sigma recovers the noise of pyrflow_ref.process.forward_sample (Haar, every stage)."""
    pyramid = resample.Pyramid.uniform("haar", (2, 2, 2), num_stages=3)
    for _ in range(draws):
        w = windows.StageWindows([rng.uniform(0.1, 0.5), rng.uniform(0.6, 0.95)])
        x0s = process.clean_pyramid_latent(rng.standard_normal(SHAPE), pyramid)
        for i in range(2):  # the stages with a high band (the coarsest has M = (1 - sigma) I)
            sc, sn = w.sigma_c(i), w.sigma_n(i)
            sigma = rng.uniform(max(sc, 0.05), sn, SHAPE[0])  # away from 0, where / sigma amplifies rounding
            b = sigma.reshape(-1, 1, 1, 1, 1)
            eps = rng.standard_normal(x0s[i].shape)
            x, _ = process.forward_sample(x0s, eps, sigma, i, w, pyramid)
            alpha, beta = weights(b, sc, sn)
            px0 = pyramid.transitions[i].project(x0s[i])
            m_x0 = alpha * px0 + beta * (x0s[i] - px0)
            assert_close((x - m_x0) / b, eps, f"stage {i}, window [{sc:.3f}, {sn:.3f}]: eps = (x - M x0) / sigma")


def prove():
    sigma, sigma_c, sigma_n = sp.symbols("sigma sigma_c sigma_n")
    rho = (sigma - sigma_c) / (sigma_n - sigma_c)
    alpha, beta = 1 - sigma, (1 - rho) * (1 - sigma_c)  # low- and high-band signal coefficients

    # Band algebra (P = diag(1, 0) in the basis of T = [L; H]): M equals the stage's forward process.
    p2, x0, eps = sp.diag(1, 0), vector("x0", 2), vector("eps", 2)
    m2 = alpha * p2 + beta * (sp.eye(2) - p2)
    x, _, _ = stage(sigma, sigma_c, sigma_n, x0, eps, p2 * x0)  # Definition 1: up(x0^(i+1)) = P x0
    assert_matrix_equal(m2 * x0 + sigma * eps, x, "x = M x0 + sigma eps (bands)")
    assert_matrix_equal((x - m2 * x0) / sigma, eps, "eps = (x - M x0) / sigma (bands)")
    assert_matrix_equal(m2.T * m2, alpha**2 * p2 + beta**2 * (sp.eye(2) - p2), "M^T M band weights (bands)")

    # Abstract: P only through P^T = P and P^2 = P.
    pm = sp.MatrixSymbol("P", 3, 3)
    m_abs = alpha * pm + beta * (sp.Identity(3) - pm)
    if sp.simplify((m_abs.T - m_abs).subs(pm.T, pm).doit()) != sp.ZeroMatrix(3, 3):
        raise AssertionError("M^T = M does not follow from P^T = P")
    p, one = sp.Symbol("P", commutative=False), sp.Integer(1)
    m_nc = alpha * p + beta * (one - p)
    # M^T M = M M (symmetry); reduce the word with P^k -> P
    mm = sp.expand(m_nc * m_nc).replace(lambda t: t.is_Pow and t.base == p, lambda t: p)
    if sp.expand(mm - (alpha**2 * p + beta**2 * (one - p))) != 0:
        raise AssertionError("M^T M = alpha^2 P + beta^2 (I - P) does not follow from P^2 = P")

    # Concrete: the exact Haar first-frame projection of a (3, 2, 2) video.
    _check_code(np.random.default_rng(1), sp.lambdify((sigma, sigma_c, sigma_n), (alpha, beta), "numpy"))
    _, low, _ = separable("haar", (3, 2, 2))
    pc = low.T * low
    q = sp.eye(pc.rows) - pc
    mc = alpha * pc + beta * q
    x0c, epsc = vector("x0", pc.rows), vector("eps", pc.rows)
    xc, _, _ = stage(sigma, sigma_c, sigma_n, x0c, epsc, pc * x0c)
    assert_matrix_equal(mc * x0c + sigma * epsc, xc, "x = M x0 + sigma eps (Haar 3x2x2)")
    assert_matrix_equal((xc - mc * x0c) / sigma, epsc, "eps recovery (Haar 3x2x2)")
    assert_matrix_equal(mc.T, mc, "M symmetric (Haar 3x2x2)")
    assert_matrix_equal(mc.T * mc, alpha**2 * pc + beta**2 * q, "M^T M band weights (Haar 3x2x2)")
    return derivation(
        "x = M x0 + sigma eps, M = (1 - sigma) P + (1 - rho)(1 - sigma_c)(I - P);"
        " M^T M = (1 - sigma)^2 P + ((1 - rho)(1 - sigma_c))^2 (I - P).",
        "Bands: low coefficient (1 - sigma), high (1 - rho)(1 - sigma_c), noise sigma in both:"
        " the stage's x (Definition 1, pyrflow_ref y_c and y_n).",
        "eps = (x - M x0) / sigma in closed form; it recovers pyrflow_ref forward_sample's noise (1e-12).",
        "M^T = M from P^T = P; M^2 = a^2 P^2 + ab (P(I - P) + (I - P)P) + b^2 (I - P)^2 = a^2 P + b^2 (I - P)"
        " from P^2 = P.",
        "Concrete check with the exact Haar first-frame P of a (3, 2, 2) video.",
    )
