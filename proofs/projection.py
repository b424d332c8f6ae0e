"""Projection onto the low band (theory §2).

Statement: if L L^T = I then P = L^T L is symmetric and idempotent (P^2 = P) and
down(up(y)) = L L^T y = y. Shown abstractly (word rewriting with the single rule L L^T -> I; a
generic orthogonal matrix via the Cayley transform of a symbolic skew-symmetric matrix) and for
pyrflow_ref's resamplers: the Haar and DCT first-frame-rule transforms and the ``orthogonal`` family
with exact rational matrices (each checked against the code's down / up / project first).
"""

import sympy as sp
from sympy.polys.matrices import DomainMatrix

from ._core import assert_matrix_equal, derivation, vector
from ._resamplers import rational_matrices, separable

CAYLEY_SIZES = (3, 4)
SHAPES = ((3, 2, 2), (5, 4, 2))


def _abstract():
    """Non-commutative symbols: L, Lt = L^T; the hypothesis is the rewrite L Lt -> 1."""
    low, low_t, y = sp.symbols("L Lt y", commutative=False)
    p = low_t * low
    if sp.expand(p * p).subs(low * low_t, 1) != p:
        raise AssertionError("abstract P^2 = P does not follow from L L^T = I")
    if (low * low_t * y).subs(low * low_t, 1) != y:
        raise AssertionError("abstract down(up(y)) = y does not follow from L L^T = I")
    lm = sp.MatrixSymbol("L", 2, 5)
    if (lm.T * lm).T != lm.T * lm:  # (L^T L)^T = L^T L^TT = L^T L
        raise AssertionError("abstract P^T = P")


def _cayley(n):
    """Q = (I - A)(I + A)^{-1} = N / d, A generic skew-symmetric: a generic orthogonal matrix (no eigenvalue -1).

    (I + A)^{-1} = adj(I + A) / det(I + A), so N = (I - A) adj(I + A) and d = det(I + A) are polynomials
    and every check below is a polynomial identity after multiplying through by a power of d.
    """
    a = sp.zeros(n, n)
    for ij, sym in zip(((i, j) for i in range(n) for j in range(i + 1, n)), sp.symbols(f"a0:{n * (n - 1) // 2}")):
        a[ij] = sym
        a[ij[::-1]] = -sym
    plus = sp.eye(n) + a
    return ((sp.eye(n) - a) * plus.adjugate()).applyfunc(sp.expand), sp.expand(plus.det())


def _matmul(a, b):
    """Exact a * b; polynomial matrices go through DomainMatrix (far faster than expression trees)."""
    da, db = DomainMatrix.from_Matrix(a).unify(DomainMatrix.from_Matrix(b))
    return (da * db).to_Matrix() if da.domain.is_PolynomialRing else a * b


def _check_projection(num, what, d=1):
    """L = num / d: L L^T = I, P = L^T L symmetric and idempotent, L L^T y = y (each times d^2 or d^4)."""
    scale = sp.eye(num.cols) * d**2
    gram, p = _matmul(num, num.T), _matmul(num.T, num)  # d^2 L L^T and d^2 P
    assert_matrix_equal(gram, scale[: num.rows, : num.rows], f"{what}: L L^T = I")
    assert_matrix_equal(p.T, p, f"{what}: P^T = P")
    # P^2 = P as P (P - I) = 0: one exact product instead of comparing two large polynomial matrices
    assert_matrix_equal(_matmul(p, p - scale), sp.zeros(num.cols), f"{what}: P^2 = P")
    y = vector("y", num.rows)
    assert_matrix_equal(gram * y, d**2 * y, f"{what}: down(up(y)) = y")


def prove():
    _abstract()
    for n in CAYLEY_SIZES:
        num, d = _cayley(n)
        assert_matrix_equal(num * num.T, d**2 * sp.eye(n), f"Cayley Q_{n} orthogonal")
        for k in range(1, n):
            _check_projection(num[:k, :], f"generic orthogonal n={n}, low rows k={k}", d)
    for shape in SHAPES:
        for family in ("haar", "dct"):
            _check_projection(separable(family, shape)[1], f"{family} first-frame {shape}")
        low = separable("orthogonal", shape, matrices=rational_matrices(shape, seed=10))[1]
        _check_projection(low, f"orthogonal first-frame {shape}")
    return derivation(
        "L L^T = I  =>  P = L^T L symmetric, P^2 = P, down(up(y)) = L L^T y = y.",
        "P^T = L^T L^TT = P; P^2 = L^T (L L^T) L -> L^T L = P; L (L^T y) -> y (rewrite L L^T -> I).",
        f"Generic: Q = (I - A)(I + A)^-1 with symbolic skew A is orthogonal (n = {CAYLEY_SIZES});"
        " its first k rows satisfy all three for every k.",
        f"pyrflow_ref's resamplers (down / up / project = L, L^T, L^T L to 1e-12): Haar, DCT and rational"
        f" 'orthogonal' first-frame separable low bands, shapes {SHAPES}.",
    )
