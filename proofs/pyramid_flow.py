"""Pyramid Flow as a special case (theory §3.4).

Statement: with block size r (avgpool A = L / sqrt(r), Up = sqrt(r) L^T) the jump
x_s = a Up(y) + b n from a coarse end (data coefficient e) to a fine start (data coefficient s),
n the high-band noise rescaled to unit variance, must satisfy a e = s and
a^2 (1 - e)^2 J_r + b^2 (r / (r - 1)) (I - J_r / r) = (1 - s)^2 I_r; the unique solution with
a, b > 0, e <= 1 is a = s + (1 - s)/sqrt(r), b = (1 - s) sqrt((r - 1)/r), e = s sqrt(r)/(s sqrt(r) + 1 - s),
with 1 - e = vs(1 - s, sqrt(r)). r = 4: a = (1 + s)/2, b = sqrt(3)(1 - s)/2, e = 2 s/(1 + s).
High-band Haar block noise H^T H = I - J_r / r has unit-diagonal correlation -1/(r - 1).
Pyramid Flow's code (gamma = 1/3, sqrt(1 + 1/gamma) = 2) computes exactly these a, b; its windows
in global sigma have the boundaries 0.5007 and 0.889.
pyrflow_ref.pyramid_flow (jump_coefficients, block_correlation, high_band_unit_noise,
stage_constants) and the ``avgpool`` Resampler (A U = I, U A = P, gain 1) are these closed forms.
"""

import numpy as np
import sympy as sp

from pyrflow_ref import natural, pyramid_flow, resample

from ._core import assert_close, assert_matrix_equal, assert_zero, derivation
from ._resamplers import axis_matrix, operator_matrix, separable

BLOCKS = {4: (1, 2, 2), 8: (2, 2, 2)}  # r -> its block (2x2 spatial, 2x2x2 space-time)
CODE_VALUES = {sp.Rational(1, 3): ("0.59988", "0.69303"), sp.Rational(2, 3): ("0.74963", "0.43366")}
BOUNDARIES = ("0.5007", "0.889")  # Pyramid Flow's windows in global sigma, finest boundary first
AVGPOOL_SHAPES = ((3, 2, 2), (5, 4, 2))


def jump(s, r):
    """(a, b, e) of the jump to fine start data coefficient s with block size r."""
    return s + (1 - s) / sp.sqrt(r), (1 - s) * sp.sqrt(sp.Rational(r - 1, r)), s * sp.sqrt(r) / (s * sp.sqrt(r) + 1 - s)


def _covariance_mismatch(a, b, e, s, r, j):
    """Left minus right side of the covariance equation for a given all-ones block J."""
    eye = sp.eye(j.rows)
    return a**2 * (1 - e) ** 2 * j + b**2 * sp.Rational(r, r - 1) * (eye - j / r) - (1 - s) ** 2 * eye


def _correlation(cov):
    """Correlation matrix of a covariance matrix."""
    return sp.Matrix(cov.rows, cov.cols, lambda i, k: cov[i, k] / sp.sqrt(cov[i, i] * cov[k, k]))


def _check_avgpool(shape):
    """avgpool = Haar rescaled to block means: A = diag(1/g) L, U = L^T diag(g) with g = L 1 = sqrt(r) per row."""
    _, low, coarse = separable("haar", shape)
    gains = low * sp.ones(low.cols, 1)
    a, up = sp.diag(*[1 / v for v in gains]) * low, low.T * sp.diag(*gains)
    assert_matrix_equal(a * up, sp.eye(low.rows), f"avgpool {shape}: A U = I")
    assert_matrix_equal(up * a, low.T * low, f"avgpool {shape}: U A = P")
    assert_matrix_equal(a * sp.ones(low.cols, 1), sp.ones(low.rows, 1), f"avgpool {shape}: A 1 = 1 (gain 1)")
    transition = resample.Resampler("avgpool", (2, 2, 2), first_frame=True)
    what = f"pyrflow_ref Resampler('avgpool') on {shape}"
    assert_close(operator_matrix(transition.down, shape), a, f"{what}: down = A")
    assert_close(operator_matrix(lambda y: transition.up(y, (len(y), *shape)), coarse), up, f"{what}: up = U")
    assert_close(transition.gain(coarse[0]), np.ones(coarse[0]), f"{what}: gain = 1")


def _check_code_jump(rng, draws=100):
    """pyrflow_ref.pyramid_flow.jump_coefficients(s, r) at random s in (0, 1) against the proven (a, b, e)."""
    s_sym = sp.Symbol("s")
    for r in BLOCKS:
        closed = sp.lambdify(s_sym, jump(s_sym, r), "numpy")
        for s in rng.uniform(0, 1, draws):
            code = pyramid_flow.jump_coefficients(float(s), r)
            assert_close(code, closed(s), f"pyrflow_ref jump_coefficients({s:.4f}, {r}) = (a, b, e)")


def _check_code_constants(alpha, beta, corrected, ori):
    """pyrflow_ref.pyramid_flow.stage_constants(): jumps and global windows against their exact values."""
    jumps, windows = pyramid_flow.stage_constants()
    if [j.stage for j in jumps] != [1, 2]:
        raise AssertionError(f"stage_constants jumps into stages {[j.stage for j in jumps]}, expected [1, 2]")
    boundaries = []
    for j, third in zip(jumps, CODE_VALUES):
        e_val = sp.Rational(sp.floor(third * 1000), 1000)  # sigmas[int(stage_range[k] * 1000)] = 1 - e
        closed = (1 - e_val, 1 - corrected.subs(ori, e_val), alpha.subs(ori, e_val), beta.subs(ori, e_val))
        code = (j.start_sigma, j.corrected_start_sigma, j.alpha, j.beta)
        what = f"stage_constants jump into stage {j.stage}: start, corrected start, alpha, beta"
        assert_close(code, closed, what)
        # The lower stage ends at natural level v = 1 - e with cumulative gain G = 2^(K - k) (K = 3 stages);
        # its global level inverts varsigma: G v / (1 - v + G v).
        v, g = 1 - e_val, sp.Integer(2) ** (3 - j.stage)
        boundaries.append(g * v / (1 - v + g * v))
    boundaries.sort()
    assert_close(windows.boundaries, [0, *boundaries, 1], "stage_constants windows: boundaries in global sigma")
    for value, decimal in zip(boundaries, BOUNDARIES):
        assert_rounds_to(value, decimal, "Pyramid Flow boundary in global sigma")


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
    for r, block_shape in BLOCKS.items():
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
        vs = natural.varsigma(1 - s, sp.sqrt(r))
        assert_zero((1 - e_r) - vs, f"r={r}: 1 - e = vs(1 - s, sqrt(r)) (pyrflow_ref varsigma)")
        # The explicit Haar block: kron of 2-point Haar matrices (pyrflow_ref's, checked), row 0 low, the rest high.
        block = sp.kronecker_product(*[axis_matrix("haar", 2) for f in block_shape if f == 2])
        cov = block[1:, :].T * block[1:, :]  # covariance of high-band noise (I - P) w on one block
        assert_matrix_equal(cov, sp.eye(r) - j / r, f"r={r}: H^T H = I - J/r")
        want = sp.eye(r) + sp.Rational(-1, r - 1) * (j - sp.eye(r))
        assert_matrix_equal(_correlation(cov), want, f"r={r}: unit-diagonal correlation, off-diagonal -1/(r - 1)")
        assert_close(pyramid_flow.block_correlation(r), want[0, 1], f"pyrflow_ref block_correlation({r})")
        transition = resample.Resampler("haar", block_shape, first_frame=False)
        noise = operator_matrix(
            lambda w, transition=transition: pyramid_flow.high_band_unit_noise(transition, w), block_shape
        )
        assert_close(noise @ noise.T, want, f"r={r}: pyrflow_ref high_band_unit_noise covariance")
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
    _check_code_constants(alpha, beta, corrected, ori)
    _check_code_jump(np.random.default_rng(2))
    for shape in AVGPOOL_SHAPES:
        _check_avgpool(shape)
    return derivation(
        "Pyramid Flow's jump is the orthonormal transition in avgpool units (A = L/sqrt(r), Up = sqrt(r) L^T).",
        "Mean: a e = s. Covariance on J_r and I - J_r/r: a^2 (1 - e)^2 r = (1 - s)^2, b^2 r/(r - 1) = (1 - s)^2.",
        "=> a = s + (1 - s)/sqrt(r), b = (1 - s) sqrt((r - 1)/r), e = s sqrt(r)/(s sqrt(r) + 1 - s) (unique, e <= 1);"
        " 1 - e = vs(1 - s, sqrt(r)).",
        *lines,
        "r = 4: a = (1 + s)/2, b = sqrt(3)(1 - s)/2, e = 2 s/(1 + s); Haar H^T H = I - J/r.",
        "Code (gamma = 1/3, sqrt(1 + 1/gamma) = 2): corrected s = e/(2(1 - e) + e); alpha = a, beta = b exactly.",
        "Grid indices 333 / 666 (e = 0.333 / 0.666): alpha, beta = 0.59988, 0.69303 / 0.74963, 0.43366.",
        "pyrflow_ref: jump_coefficients = (a, b, e) at 100 random s per r (1e-12); block_correlation and"
        " high_band_unit_noise give -1/(r - 1); stage_constants has these alpha, beta, starts and the global"
        f" boundaries sigma(1 - e, 2^(K - k)) = {', '.join(BOUNDARIES)}.",
        f"avgpool: A = L / sqrt(r), U = sqrt(r) L^T per coarse row; A U = I, U A = P, gain 1 = the code's"
        f" Resampler('avgpool') on {AVGPOOL_SHAPES}.",
    )
