"""Orthonormal resamplers (theory §2).

Statement: for T = [L; H] the 1-D Haar and DCT-II resamplers, T T^T = I; the first-frame time
transform blockdiag(1, T_{F-1}) and the separable (T, H, W) transform T_t (x) T_h (x) T_w are
orthogonal; the 3-D low band L satisfies L L^T = I; and per level frame 0 has spatial factor
r = 4 (gain 2 on a constant video) while every other frame has r = 8 (gain 2 sqrt 2).
"""

import sympy as sp

from ._core import (
    assert_matrix_equal,
    assert_orthogonal,
    assert_zero,
    axis_transform,
    dct2_matrix,
    dct_matrix,
    derivation,
    haar_matrix,
    separable,
)

HAAR_SIZES = (2, 4, 6)
DCT_SIZES = (2, 4, 6)
FRAMES = (3, 5)
SHAPES = ((3, 2, 2), (5, 4, 2))


def _check_gain(family, shape):
    """Low band of a constant video: r fine elements of weight 1/sqrt(r) per coarse element."""
    _, low, coarse = separable(family, shape)
    per_frame = coarse[1] * coarse[2]
    gains = low * sp.ones(low.cols, 1)
    for row in range(low.rows):
        r = 4 if row < per_frame else 8  # coarse frame 0 comes from fine frame 0 alone
        assert_zero(gains[row] - sp.sqrt(r), f"{family} {shape}: gain sqrt({r}) of low row {row}")
        if family == "haar":
            support = [v for v in low.row(row) if v != 0]
            if len(support) != r or any(v != 1 / sp.sqrt(r) for v in support):
                raise AssertionError(f"haar {shape}: low row {row} is not a block mean over r={r} elements")


def prove():
    for n in HAAR_SIZES:
        assert_orthogonal(haar_matrix(n), f"Haar T_{n} T_{n}^T = I")
    for n in DCT_SIZES:
        assert_orthogonal(dct2_matrix(n), f"DCT-II C_{n} C_{n}^T = I")
        t = dct_matrix(n)
        assert_orthogonal(t, f"DCT resampler T_{n} T_{n}^T = I")
        select = sp.eye(n)[: n // 2, :]
        assert_matrix_equal(t[: n // 2, :], dct2_matrix(n // 2).T * select * dct2_matrix(n), f"DCT L_{n} = C^T S C")
    for family in ("haar", "dct"):
        for f in FRAMES:
            t, _ = axis_transform(family, f, first_frame=True)
            assert_orthogonal(t, f"{family} first-frame time transform, F={f}")
        for shape in SHAPES:
            full, low, _ = separable(family, shape)
            assert_orthogonal(full, f"{family} separable transform {shape} orthogonal")
            assert_orthogonal(low, f"{family} separable low band {shape}: L L^T = I")
            _check_gain(family, shape)
    return derivation(
        "T = [L; H] orthogonal for Haar and DCT-II resamplers, with the first-frame rule, separable in (T, H, W).",
        f"Haar T_n T_n^T = I exactly for n = {HAAR_SIZES}; DCT-II C_n C_n^T = I for n = {DCT_SIZES}"
        " (cos(pi k / 2n) exact radicals, residuals zero by minimal polynomial).",
        "DCT resampler T_n = blockdiag(C_{n/2}^T, C_{n/2}^T) C_n: product of orthogonal matrices;"
        " its low rows equal L = C_{n/2}^T S C_n (S keeps the low half).",
        f"Time axis blockdiag(1, T_(F-1)) orthogonal for F = {FRAMES}; Kronecker T_t (x) T_h (x) T_w"
        f" orthogonal and L L^T = I for shapes {SHAPES}, both families.",
        "Low band of the all-ones video: coarse frame 0 gets sqrt(4) = 2, other frames sqrt(8) = 2 sqrt(2);"
        " Haar low rows average exactly r = 4 (frame 0) or r = 8 fine elements.",
    )
