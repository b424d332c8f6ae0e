"""Shared machinery of the proofs: exact zero checks, and the float64 comparison that ties a closed form to the code.

Exact checks use SymPy arithmetic and either pass or raise ``AssertionError`` naming the statement
that failed and the residual that was not zero. Code that cannot take SymPy values (it converts
to float64) is compared with the proof's closed form by :func:`assert_close`.
"""

import numpy as np
import sympy as sp

_X = sp.Symbol("_x")
TOL = 1e-12  # float64 agreement required between the code and a closed form (relative to max(1, |value|))


def assert_zero(expr, what):
    """Raise unless ``expr`` is identically zero (symbolically, or as an exact algebraic number)."""
    expr = sp.sympify(expr)
    # cancel settles rational functions cheaply; simplify is the general fallback.
    if sp.cancel(sp.expand(expr)) == 0 or sp.simplify(expr) == 0:
        return
    # simplify may leave nested radicals such as sqrt(2 + sqrt(2)) undecided; an algebraic constant
    # is zero exactly when its minimal polynomial is x.
    if not expr.free_symbols:
        try:
            if sp.minimal_polynomial(expr, _X) == _X:
                return
        except sp.polys.polyerrors.NotAlgebraic:
            pass
    raise AssertionError(f"{what} does not hold: residual {sp.simplify(expr)}")


def assert_matrix_equal(a, b, what):
    """Raise unless the matrices ``a`` and ``b`` are exactly equal entry by entry."""
    a, b = sp.Matrix(a), sp.Matrix(b)
    if a.shape != b.shape:
        raise AssertionError(f"{what} does not hold: shapes {a.shape} != {b.shape}")
    diff = (a - b).applyfunc(sp.expand)
    for idx, entry in enumerate(diff):
        if entry != 0:  # expand already cancels most exact terms; check the rest properly
            assert_zero(entry, f"{what} (entry {divmod(idx, diff.cols)})")


def assert_positive(expr, what):
    """Raise unless SymPy can decide from the symbols' assumptions that ``expr`` is positive."""
    if sp.factor(sp.simplify(expr)).is_positive is not True:
        raise AssertionError(f"{what} does not hold: cannot show {sp.factor(expr)} > 0")


def assert_orthogonal(t, what):
    """T T^T = I (for a square T this is orthogonality; for a low band L it is L L^T = I)."""
    assert_matrix_equal(t * t.T, sp.eye(t.rows), what)


def to_float(value):
    """A SymPy number or matrix (or anything array-like) as a float64 array."""
    if isinstance(value, sp.MatrixBase):
        value = value.evalf().tolist()
    return np.asarray(value, dtype=np.float64)


def assert_close(code, closed, what, tol=TOL):
    """Raise unless the code's float64 value equals the closed form to ``tol`` (relative to max(1, |closed|))."""
    code, closed = np.asarray(code, dtype=np.float64), to_float(closed)
    if code.shape != closed.shape:
        raise AssertionError(f"{what} does not hold: code shape {code.shape} != closed-form shape {closed.shape}")
    if not code.size:
        return
    err = np.max(np.abs(code - closed))
    if not err <= tol * max(1.0, np.max(np.abs(closed))):  # also rejects NaN
        raise AssertionError(f"{what} does not hold: max |code - closed form| = {err:.3g} (tolerance {tol:g})")


def vector(name, n):
    """A generic symbolic column vector (name_0, ..., name_{n-1})."""
    return sp.Matrix(sp.symbols(f"{name}_0:{n}"))


def derivation(title, *steps):
    """The printable derivation: statement, key steps, QED."""
    return "\n".join([title, *(f"  {s}" for s in steps), "  QED"])
