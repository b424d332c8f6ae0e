"""Pyramid Flow as a special case (theory §3.4).

Statement: with block size r (avgpool A = L / sqrt(r), Up = sqrt(r) L^T) the jump
x_s = a Up(y) + b n from a coarse end (data coefficient e) to a fine start (data coefficient s),
n the high-band noise rescaled to unit variance, must satisfy a e = s and
a^2 (1 - e)^2 J_r + b^2 (r / (r - 1)) (I - J_r / r) = (1 - s)^2 I_r; the unique solution with
a, b > 0, e <= 1 is a = s + (1 - s)/sqrt(r), b = (1 - s) sqrt((r - 1)/r), e = s sqrt(r)/(s sqrt(r) + 1 - s),
with 1 - e = vs(1 - s, sqrt(r)). r = 4: a = (1 + s)/2, b = sqrt(3)(1 - s)/2, e = 2 s/(1 + s).
High-band Haar block noise H^T H = I - J_r / r has unit-diagonal correlation -1/(r - 1).
Pyramid Flow's code (gamma = 1/3, sqrt(1 + 1/gamma) = 2) computes exactly these a, b.
"""

import sympy as sp

from ._core import assert_matrix_equal, assert_zero, derivation, haar_matrix
from .varsigma import vs

BLOCKS = {4: 2, 8: 3}  # r -> number of 2x axes in the block (2x2 spatial, 2x2x2 space-time)
CODE_VALUES = {sp.Rational(1, 3): ("0.59988", "0.69303"), sp.Rational(2, 3): ("0.74963", "0.43366")}


def jump(s, r):
    """(a, b, e) of the jump to fine start data coefficient s with block size r."""
    return s + (1 - s) / sp.sqrt(r), (1 - s) * sp.sqrt(sp.Rational(r - 1, r)), s * sp.sqrt(r) / (s * sp.sqrt(r) + 1 - s)


def _covariance_mismatch(a, b, e, s, r, j):
    """Left minus right side of the covariance equation for a given all-ones block J."""
    eye = sp.eye(j.rows)
    return a**2 * (1 - e) ** 2 * j + b**2 * sp.Rational(r, r - 1) * (eye - j / r) - (1 - s) ** 2 * eye


def assert_rounds_to(value, decimal, what):
    """Exact check that the positive number ``value`` rounds to ``decimal`` (half-interval bracket on squares)."""
    centre, half = sp.Rational(decimal), sp.Rational(1, 2 * 10 ** len(decimal.split(".")[1]))
    sq = sp.expand(value**2)
    if not (sq.is_Rational and (centre - half) ** 2 <= sq < (centre + half) ** 2):
        raise AssertionError(f"{what}: {value} does not round to {decimal}")


def prove():
    a, b = sp.Symbol("a"), sp.Symbol("b", positive=True)
    u = sp.Symbol("u", positive=True)
    s = 1 / (1 + u)  # covers s in (0, 1), so SymPy can decide signs
    lines = []
    for r, axes in BLOCKS.items():
        j = sp.ones(r, r)
        # Mean a e = s fixes e = s / a; the coarse noise then enters with coefficient a (1 - e) = a - s,
        # which must be >= 0 (e <= 1). Solve the covariance equation for a and b > 0.
        eqs = set(_covariance_mismatch(a, b, s / a, s, r, j))  # the r^2 entries, deduplicated
        sols = sp.solve(eqs, [a, b], dict=True)
        signs = [sp.factor(sp.simplify(sol[a] - s)).is_nonnegative for sol in sols]
        if None in signs or signs.count(True) != 1:
            raise AssertionError(f"r={r}: expected exactly one solution with e <= 1, got {sols}")
        sol = sols[signs.index(True)]
        a_r, b_r, e_r = jump(s, r)
        assert_zero(sol[a] - a_r, f"r={r}: a = s + (1 - s)/sqrt(r)")
        assert_zero(sol[b] - b_r, f"r={r}: b = (1 - s) sqrt((r - 1)/r)")
        assert_zero(s / sol[a] - e_r, f"r={r}: e = s sqrt(r)/(s sqrt(r) + 1 - s)")
        assert_zero((1 - e_r) - vs(1 - s, sp.sqrt(r)), f"r={r}: 1 - e = vs(1 - s, sqrt(r))")
        # The explicit Haar block: kron of 2-point Haar matrices, row 0 low, the rest high.
        block = sp.kronecker_product(*[haar_matrix(2)] * axes)
        cov = block[1:, :].T * block[1:, :]  # covariance of high-band noise (I - P) w on one block
        assert_matrix_equal(cov, sp.eye(r) - j / r, f"r={r}: H^T H = I - J/r")
        corr = sp.Matrix(r, r, lambda i, k: cov[i, k] / sp.sqrt(cov[i, i] * cov[k, k]))
        want = sp.Matrix(r, r, lambda i, k: 1 if i == k else sp.Rational(-1, r - 1))
        assert_matrix_equal(corr, want, f"r={r}: unit-diagonal correlation, off-diagonal -1/(r - 1)")
        lines.append(f"r = {r}: a, b, e unique; block correlation -1/{r - 1}")
    s_sym = sp.Symbol("s")
    a4, b4, e4 = jump(s_sym, 4)
    for got, want, name in (
        (a4, (1 + s_sym) / 2, "a"),
        (b4, sp.sqrt(3) * (1 - s_sym) / 2, "b"),
        (e4, 2 * s_sym / (1 + s_sym), "e"),
    ):
        assert_zero(got - want, f"r = 4: {name}")

    # Pyramid Flow's code: e is its data coefficient at the coarse end ("ori"), gamma = 1/3.
    gamma, ori = sp.Rational(1, 3), sp.Symbol("e")
    root = sp.sqrt(1 + 1 / gamma)
    assert_zero(root - 2, "sqrt(1 + 1/gamma) = 2 = sqrt(r)")
    corrected = ori / (root * (1 - ori) + ori)  # fine start data coefficient s
    assert_zero(jump(corrected, 4)[2] - ori, "corrected start inverts e = 2 s/(1 + s)")
    alpha = 1 / (root * (1 - ori) + ori)
    beta = alpha * (1 - ori) / sp.sqrt(gamma)
    assert_zero(alpha - jump(corrected, 4)[0], "alpha = a")
    assert_zero(beta - jump(corrected, 4)[1], "beta = b")
    for third, (alpha_txt, beta_txt) in CODE_VALUES.items():
        index = sp.floor(third * 1000)  # int(stage_range[k] * 1000): 333 and 666
        e_val = sp.Rational(index, 1000)  # sigmas[index] = 1 - index/1000, data coefficient index/1000
        assert_rounds_to(alpha.subs(ori, e_val), alpha_txt, f"alpha at e = {e_val}")
        assert_rounds_to(beta.subs(ori, e_val), beta_txt, f"beta at e = {e_val}")
    return derivation(
        "Pyramid Flow's jump is the orthonormal transition in avgpool units (A = L/sqrt(r), Up = sqrt(r) L^T).",
        "Mean: a e = s. Covariance on J_r and I - J_r/r: a^2 (1 - e)^2 r = (1 - s)^2, b^2 r/(r - 1) = (1 - s)^2.",
        "=> a = s + (1 - s)/sqrt(r), b = (1 - s) sqrt((r - 1)/r), e = s sqrt(r)/(s sqrt(r) + 1 - s) (unique, e <= 1);"
        " 1 - e = vs(1 - s, sqrt(r)).",
        *lines,
        "r = 4: a = (1 + s)/2, b = sqrt(3)(1 - s)/2, e = 2 s/(1 + s); Haar H^T H = I - J/r.",
        "Code (gamma = 1/3, sqrt(1 + 1/gamma) = 2): corrected s = e/(2(1 - e) + e); alpha = a, beta = b exactly.",
        "Grid indices 333 / 666 (e = 0.333 / 0.666): alpha, beta = 0.59988, 0.69303 / 0.74963, 0.43366.",
    )
