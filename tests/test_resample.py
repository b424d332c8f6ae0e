"""Resamplers: perfect reconstruction, adjointness and orthonormality sweeps; PyWavelets agreement."""

import itertools

import numpy as np
import pytest
import pywt
from hypothesis import given
from hypothesis import strategies as st
from tolerances import TOL

from pyrflow_ref.resample import Pyramid, Resampler, check_orthogonal, dct_matrix, haar_matrix

FAMILIES = ["haar", "dct", "orthogonal"]
FACTORS = [(2, 2, 2), (1, 2, 2), (2, 1, 1), (1, 1, 2)]
DTYPES = [np.float32, np.float64]


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def make(family: str, factors, shape, first_frame: bool, rng=None) -> Resampler:
    """A resampler for ``shape``; ``orthogonal`` gets random matrices of the right sizes."""
    if family != "orthogonal":
        return Resampler(family, factors, first_frame)
    rng = rng or np.random.default_rng(0)
    f, h, w = shape[-3:]
    sizes = (f - 1 if first_frame else f, h, w)
    mats = tuple(random_orthogonal(n, rng) if fac > 1 else None for n, fac in zip(sizes, factors))
    return Resampler("orthogonal", factors, first_frame, mats)


def shape_for(factors, first_frame: bool, odd: bool) -> tuple[int, ...]:
    """(B, C, F, H, W): 1 + 2 ft frames under the first-frame rule (odd), else 3 (odd) or 2 ft."""
    ft, fh, fw = factors
    f = 1 + 2 * ft if first_frame else (3 if odd else 2 * ft)
    return (2, 3, f, 2 * fh, 4 * fw)


CASES = [
    (fam, fac, ff, odd, dt)
    for fam, fac, (ff, odd), dt in itertools.product(
        FAMILIES, FACTORS, [(True, True), (False, False), (False, True)], DTYPES
    )
    if ff or not odd or fac[0] == 1
]


@pytest.mark.parametrize("family,factors,first_frame,odd,dtype", CASES)
def test_perfect_reconstruction_and_adjointness(family, factors, first_frame, odd, dtype):
    shape = shape_for(factors, first_frame, odd)
    r = make(family, factors, shape, first_frame)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(r.coarse_shape(shape)).astype(dtype)
    tol = TOL[np.dtype(dtype)] * 10
    assert r.down(x).dtype == dtype
    # down(up(y)) = y
    np.testing.assert_allclose(r.down(r.up(y, shape)), y, atol=tol)
    # <L x, y> = <x, L^T y>
    assert abs(np.vdot(r.down(x), y) - np.vdot(x, r.up(y, shape))) <= tol * x.size
    # P idempotent, (I - P) orthogonal to P, and energy splits exactly
    p = r.project(x)
    np.testing.assert_allclose(r.project(p), p, atol=tol)
    assert abs(np.vdot(p, r.high(x))) <= tol * x.size
    np.testing.assert_allclose(
        np.sum(x.astype(np.float64) ** 2),
        np.sum(r.down(x).astype(np.float64) ** 2) + np.sum(r.high(x).astype(np.float64) ** 2),
        rtol=tol * 10,
    )


@pytest.mark.parametrize("family", ["haar", "dct"])
@pytest.mark.parametrize("n,factor", [(2, 2), (6, 2), (8, 2), (9, 3), (8, 4)])
def test_matrices_orthogonal_low_band_first(family, n, factor):
    t = (haar_matrix if family == "haar" else dct_matrix)(n, factor)
    np.testing.assert_allclose(t @ t.T, np.eye(n), atol=1e-13)
    low = t[: n // factor]
    # a constant gains sqrt(factor) and lives in the low band only
    np.testing.assert_allclose(low @ np.ones(n), np.sqrt(factor) * np.ones(n // factor), atol=1e-13)
    np.testing.assert_allclose(t[n // factor :] @ np.ones(n), 0, atol=1e-13)


@pytest.mark.parametrize("axes", [c for k in (1, 2, 3) for c in itertools.combinations((2, 3, 4), k)])
def test_haar_matches_pywavelets(axes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 4, 6, 8))
    factors = tuple(2 if a in axes else 1 for a in (2, 3, 4))
    r = Resampler("haar", factors, first_frame=False)
    coeffs = pywt.dwtn(x, "haar", axes=axes)
    np.testing.assert_allclose(r.down(x), coeffs["a" * len(axes)], atol=1e-13)


def test_first_frame_rule():
    """Frame 0 is resampled in space only; frames 1.. in time and space; gains follow."""
    r = Resampler("haar", (2, 2, 2), first_frame=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 5, 4, 4))
    y = r.down(x)
    assert y.shape == (1, 1, 3, 2, 2)
    np.testing.assert_allclose(y[:, :, :1], Resampler("haar", (1, 2, 2), False).down(x[:, :, :1]), atol=1e-13)
    np.testing.assert_allclose(y[:, :, 1:], Resampler("haar", (2, 2, 2), False).down(x[:, :, 1:]), atol=1e-13)
    ones = np.ones((1, 1, 5, 4, 4))
    np.testing.assert_allclose(r.down(ones)[0, 0, :, 0, 0], r.gain(3), atol=1e-13)
    np.testing.assert_allclose(r.gain(3), [2.0, np.sqrt(8), np.sqrt(8)])


def test_dct_constant_gain_and_smooth_signal():
    r = Resampler("dct", (2, 2, 2), first_frame=True)
    ones = np.ones((1, 1, 9, 8, 8))
    np.testing.assert_allclose(r.down(ones)[0, 0, :, 0, 0], r.gain(5), atol=1e-12)


def test_avgpool_is_scaled_haar():
    """A = L / sqrt(r), U = sqrt(r) L^T: mean pooling and nearest upsampling, same projection P."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 4, 6))
    avg, haar = Resampler("avgpool"), Resampler("haar")
    y = avg.down(x)
    np.testing.assert_allclose(y[:, :, 0], x[:, :, 0].reshape(1, 2, 2, 2, 3, 2).mean(axis=(3, 5)), atol=1e-13)
    np.testing.assert_allclose(
        y[:, :, 1:], x[:, :, 1:].reshape(1, 2, 2, 2, 2, 2, 3, 2).mean(axis=(3, 5, 7)), atol=1e-13
    )
    np.testing.assert_allclose(avg.up(y, x.shape)[:, :, 1, 0, 0], y[:, :, 1, 0, 0], atol=1e-13)  # nearest
    np.testing.assert_allclose(avg.project(x), haar.project(x), atol=1e-13)
    np.testing.assert_allclose(avg.down(avg.up(y, x.shape)), y, atol=1e-13)
    np.testing.assert_allclose(avg.gain(3), 1.0)
    with pytest.raises(ValueError, match="orthonormal"):
        avg.up_noisy(y, 0.5, x)


@st.composite
def orthogonal_resamplers(draw):
    """Random per-axis orthogonal matrices with random factors: the property-test generator."""
    factors = tuple(draw(st.sampled_from([1, 2])) for _ in range(3))
    first_frame = draw(st.booleans())
    k = [draw(st.integers(1, 3)) for _ in range(3)]
    f = 1 + factors[0] * k[0] if first_frame else factors[0] * k[0]
    shape = (1, 1, f, factors[1] * k[1], factors[2] * k[2])
    seed = draw(st.integers(0, 2**32 - 1))
    return make("orthogonal", factors, shape, first_frame, np.random.default_rng(seed)), shape, seed


@given(orthogonal_resamplers())
def test_random_orthogonal_properties(case):
    r, shape, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    y = rng.standard_normal(r.coarse_shape(shape))
    np.testing.assert_allclose(r.down(r.up(y, shape)), y, atol=1e-12)
    np.testing.assert_allclose(r.project(r.project(x)), r.project(x), atol=1e-12)
    # up_noisy of white noise is white: its matrix M satisfies M M^T = I
    n_c, n_f = int(np.prod(y.shape)), int(np.prod(shape))
    s = 0.7
    a = r.up(np.eye(n_c).reshape(n_c, *y.shape[1:]), (n_c, *shape[1:])).reshape(n_c, n_f)
    b = s * r.high(np.eye(n_f).reshape(n_f, *shape[1:])).reshape(n_f, n_f)
    cov = s**2 * a.T @ a + b.T @ b
    np.testing.assert_allclose(cov, s**2 * np.eye(n_f), atol=1e-12)


def test_pyramid_shapes_and_gains():
    p = Pyramid.uniform("haar", (2, 2, 2), 3)
    assert p.shapes((1, 16, 21, 56, 104)) == [(1, 16, 21, 56, 104), (1, 16, 11, 28, 52), (1, 16, 6, 14, 26)]
    gains = p.gains((1, 16, 21, 56, 104))
    np.testing.assert_allclose(gains[2][:2], [4.0, 8.0])
    assert [len(g) for g in gains] == [21, 11, 6]
    assert p.stage_of_shape((1, 16, 11, 28, 52), (1, 16, 21, 56, 104)) == 1


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: Pyramid.uniform("haar", (2, 2, 2), 3).shapes((1, 1, 21, 58, 104)),
            r"transition 1 -> 2: height 29 is not divisible by factor 2",
        ),
        (lambda: Resampler().coarse_shape((1, 1, 20, 4, 4)), r"frame count 20 does not fit the first-frame rule"),
        (lambda: Resampler(first_frame=False).coarse_shape((1, 1, 5, 4, 4)), r"frame count 5 is not divisible"),
        (
            lambda: Resampler("orthogonal", (1, 1, 2), False, (None, None, np.ones((2, 2)))),
            r"axis 'width' is not orthogonal",
        ),
        (
            lambda: Resampler("orthogonal", (1, 1, 2), False, (None, None, np.eye(3))),
            r"size for axis 'width' 3 is not divisible",
        ),
        (lambda: Resampler("orthogonal", (1, 2, 1), False, (None, None, None)), r"no matrix given for axis 'height'"),
        (lambda: Resampler("wavelet"), r"unknown resampler family 'wavelet'"),
        (lambda: Resampler("haar", (2, 0, 2)), r"three positive integers"),
        (lambda: check_orthogonal(np.ones((2, 3))), r"square"),
        (
            lambda: Resampler("orthogonal", (1, 1, 2), False, (None, None, np.eye(4))).down(np.zeros((1, 1, 1, 1, 6))),
            r"size 4, but the axis has length 6",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
