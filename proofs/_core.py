"""Shared exact machinery of the proofs: zero checks, orthonormal per-axis resamplers, separable transforms.

Everything is exact SymPy arithmetic. A check either passes or raises ``AssertionError`` naming the
statement that failed and the residual that was not zero.
"""

import sympy as sp

_X = sp.Symbol("_x")


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


def haar_matrix(n, factor=2):
    """Orthonormal 1-D Haar analysis matrix [L; H] of size n (factor 1: identity).

    Low rows: sums over blocks of ``factor`` elements divided by sqrt(factor); high rows: the
    normalised differences of the same pairs (PyWavelets' orthonormal Haar up to sign).
    """
    if factor == 1:
        return sp.eye(n)
    if factor != 2 or n % 2:
        raise ValueError(f"haar_matrix needs factor 2 and even n, got n={n}, factor={factor}")
    m, c = n // 2, 1 / sp.sqrt(2)
    t = sp.zeros(n, n)
    for j in range(m):
        t[j, 2 * j] = t[j, 2 * j + 1] = t[m + j, 2 * j] = c
        t[m + j, 2 * j + 1] = -c
    return t


def dct2_matrix(n):
    """Orthonormal DCT-II matrix C_n[k, j] = a_k cos(pi (2j + 1) k / (2n)) with exact cosines."""
    return sp.Matrix(
        n, n, lambda k, j: sp.sqrt(sp.Rational(1 if k == 0 else 2, n)) * sp.cos(sp.pi * (2 * j + 1) * k / (2 * n))
    )


def dct_matrix(n, factor=2):
    """DCT resampler [L; H]: keep the low (high) half of the DCT-II coefficients, inverse DCT at n/2.

    L = C_{n/2}^T [I 0] C_n and H = C_{n/2}^T [0 I] C_n, i.e. T = blockdiag(C_{n/2}^T, C_{n/2}^T) C_n.
    """
    if factor == 1:
        return sp.eye(n)
    if factor != 2 or n % 2:
        raise ValueError(f"dct_matrix needs factor 2 and even n, got n={n}, factor={factor}")
    inv_half = dct2_matrix(n // 2).T
    return sp.diag(inv_half, inv_half) * dct2_matrix(n)


FAMILIES = {"haar": haar_matrix, "dct": dct_matrix}


def axis_transform(family, n, factor=2, first_frame=False):
    """Per-axis orthogonal transform and its number of low rows.

    First-frame rule (time axis): frame 0 passes through unchanged, frames 1..n-1 are resampled,
    so the transform is blockdiag(1, T_{n-1}) and its low band has 1 + (n-1)/factor rows.
    """
    if first_frame:
        return sp.diag(1, FAMILIES[family](n - 1, factor)), 1 + (n - 1) // factor
    return FAMILIES[family](n, factor), n // factor


def separable(family, shape, factors=(2, 2, 2), first_frame=True):
    """Separable (T, H, W) transform and its low band, C-order flattening (frame slowest).

    Returns (T3, L3, coarse_shape) with T3 = T_t (x) T_h (x) T_w and L3 = L_t (x) L_h (x) L_w.
    """
    axes = [
        axis_transform(family, n, f, first_frame=(first_frame and ax == 0))
        for ax, (n, f) in enumerate(zip(shape, factors))
    ]
    full = sp.kronecker_product(*[t for t, _ in axes])
    low = sp.kronecker_product(*[t[:k, :] for t, k in axes])
    return full, low, tuple(k for _, k in axes)


def vector(name, n):
    """A generic symbolic column vector (name_0, ..., name_{n-1})."""
    return sp.Matrix(sp.symbols(f"{name}_0:{n}"))


def derivation(title, *steps):
    """The printable derivation: statement, key steps, QED."""
    return "\n".join([title, *(f"  {s}" for s in steps), "  QED"])
