"""PT-DMD's closed-form noise recovery and band weights (theory §4).

Statement: within a stage (Definition 1), x = M x0 + sigma eps with
M = (1 - sigma) P + (1 - rho)(1 - sigma_c)(I - P), the stage's x of the forward process; so
eps = (x - M x0) / sigma. M is symmetric and
M^T M = (1 - sigma)^2 P + ((1 - rho)(1 - sigma_c))^2 (I - P), using P^2 = P and P^T = P: the band
weights (1 - sigma)^2 and ((1 - rho)(1 - sigma_c))^2 of the back-propagated score difference.
"""

import sympy as sp

from ._core import assert_matrix_equal, derivation, separable, vector
from .forward_properties import stage


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
        "x = M x0 + sigma eps, M = (1 - sigma) P + (1 - rho)(1 - sigma_c)(I - P); M^T M = (1 - sigma)^2 P + ((1 - rho)(1 - sigma_c))^2 (I - P).",
        "Bands: low coefficient (1 - sigma), high (1 - rho)(1 - sigma_c), noise sigma in both: the stage's x (Definition 1).",
        "eps = (x - M x0) / sigma in closed form.",
        "M^T = M from P^T = P; M^2 = a^2 P^2 + ab (P(I - P) + (I - P)P) + b^2 (I - P)^2 = a^2 P + b^2 (I - P) from P^2 = P.",
        "Concrete check with the exact Haar first-frame P of a (3, 2, 2) video.",
    )
