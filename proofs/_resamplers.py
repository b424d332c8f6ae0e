"""Exact resamplers of pyrflow_ref, each checked against the code before a proof uses it (theory §2).

pyrflow_ref.resample builds its matrices in float64, which no exact proof can use. Every matrix
here is the statement's closed form, returned only after the code's float64 matrix (the per-axis
``haar_matrix`` / ``dct_matrix`` and the assembled ``Resampler``'s down, up and project) equals it
entry by entry to 1e-12; so each identity proven on it is an identity of the code's resampler.
Family names are the code's ``resample.FAMILIES``.
"""

from functools import cache
from random import Random

import numpy as np
import sympy as sp

from pyrflow_ref import resample

from ._core import assert_close, to_float


@cache
def _haar(n, factor):
    """Block sums over ``factor`` elements / sqrt(factor); high rows: the Helmert zero-sum basis of each block.

    Helmert row k (k = 1 .. factor - 1) is (1, ..., 1, -k, 0, ...) / sqrt(k (k + 1)), k ones; for
    factor 2 it is the Haar detail row (1, -1) / sqrt(2).
    """
    helmert = sp.Matrix(
        factor - 1, factor, lambda k, j: (1 if j <= k else -(k + 1) if j == k + 1 else 0) / sp.sqrt((k + 1) * (k + 2))
    )
    eye = sp.eye(n // factor)
    low = sp.kronecker_product(eye, sp.ones(1, factor) / sp.sqrt(factor))
    return low.col_join(sp.kronecker_product(eye, helmert))


@cache
def dct2(n):
    """Orthonormal DCT-II matrix C_n[k, j] = a_k cos(pi (2j + 1) k / (2n)) with exact cosines."""
    return sp.Matrix(
        n, n, lambda k, j: sp.sqrt(sp.Rational(1 if k == 0 else 2, n)) * sp.cos(sp.pi * (2 * j + 1) * k / (2 * n))
    )


@cache
def _dct(n, factor):
    """L = C_m^T [I 0] C_n (keep the lowest m = n / factor coefficients, invert at length m); H likewise at n - m."""
    m = n // factor
    c = dct2(n)
    return (dct2(m).T * c[:m, :]).col_join(dct2(n - m).T * c[m:, :])


CLOSED_FORMS = {"haar": (_haar, "haar_matrix"), "dct": (_dct, "dct_matrix")}


def axis_matrix(family, n, factor=2):
    """Exact T = [L; H] of one axis (``factor`` >= 2); raises unless pyrflow_ref's matrix equals it."""
    closed, name = CLOSED_FORMS[family]
    t = closed(n, factor)
    assert_close(getattr(resample, name)(n, factor), t, f"pyrflow_ref.resample.{name}({n}, {factor}) = closed form")
    return t


def rational_orthogonal(n, seed):
    """An exact orthogonal matrix with rational entries: the Cayley transform (I - A)(I + A)^-1 of a skew A.

    I + A is invertible for every real skew A (its eigenvalues are 1 + i t), so any rational A will do.
    """
    rng = Random(seed)
    a = sp.zeros(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            a[i, j] = sp.Rational(rng.randint(-4, 4), rng.randint(1, 4))
            a[j, i] = -a[i, j]
    return (sp.eye(n) - a) * (sp.eye(n) + a).inv()


def rational_matrices(shape, seed):
    """Exact rational orthogonal per-axis matrices for ``shape`` (time axis: frames 1.., the first-frame rule)."""
    return [rational_orthogonal(n - 1 if ax == 0 else n, seed + ax) for ax, n in enumerate(shape)]


def operator_matrix(op, in_shape):
    """The matrix of the code's linear map ``op`` on arrays of ``in_shape`` (C order), from the basis vectors."""
    n = int(np.prod(in_shape))
    return np.asarray(op(np.eye(n).reshape(n, *in_shape))).reshape(n, -1).T


def separable(family, shape, factors=(2, 2, 2), first_frame=True, matrices=None):
    """Exact separable (T, H, W) transform of ``Resampler(family, factors, first_frame, matrices)`` on ``shape``.

    Returns (T3, L3, coarse_shape) with T3 = T_t (x) T_h (x) T_w and L3 = L_t (x) L_h (x) L_w, C-order
    flattening (frame slowest); under the first-frame rule T_t = blockdiag(1, T_{F-1}), so the time low
    band has 1 + (F - 1) / factor rows. ``matrices`` are the exact per-axis matrices of family
    ``"orthogonal"`` (``None``: identity); the other families leave an axis with factor 1 alone.
    Raises unless the code's down, up and project are L3, L3^T and L3^T L3.
    """
    if family not in resample.FAMILIES or family == "avgpool":
        raise AssertionError(f"{family!r} is not an orthonormal resampler family of pyrflow_ref {resample.FAMILIES}")
    axes = []
    for ax, (n, f) in enumerate(zip(shape, factors)):
        rest = first_frame and ax == 0
        m = n - 1 if rest else n
        if family == "orthogonal":
            t = sp.eye(m) if matrices[ax] is None else matrices[ax]
        else:
            t = sp.eye(m) if f == 1 else axis_matrix(family, m, f)
        axes.append((sp.diag(1, t), 1 + m // f) if rest else (t, m // f))
    full = sp.kronecker_product(*[t for t, _ in axes])
    low = sp.kronecker_product(*[t[:k, :] for t, k in axes])
    coarse = tuple(k for _, k in axes)

    code_matrices = None if matrices is None else tuple(None if m is None else to_float(m) for m in matrices)
    transition = resample.Resampler(family, factors, first_frame, code_matrices)
    # kron of the float axis blocks: the same numbers as float(L3) without evaluating every exact product
    low_f = np.ones((1, 1))
    for t, k in axes:
        low_f = np.kron(low_f, to_float(t[:k, :]))
    what = f"pyrflow_ref Resampler({family!r}, {factors}, first_frame={first_frame}) on {shape}"
    assert_close(operator_matrix(transition.down, shape), low_f, f"{what}: down = L")
    assert_close(operator_matrix(lambda y: transition.up(y, (len(y), *shape)), coarse), low_f.T, f"{what}: up = L^T")
    assert_close(operator_matrix(transition.project, shape), low_f.T @ low_f, f"{what}: project = L^T L")
    return full, low, coarse
