"""Orthonormal resamplers (theory §2).

Statement: for T = [L; H] the 1-D Haar (block sums / sqrt(factor) and the Helmert zero-sum rows) and
DCT resamplers, T T^T = I; the first-frame time transform blockdiag(1, T_{F-1}) and the separable
(T, H, W) transform T_t (x) T_h (x) T_w are orthogonal, also for user ``orthogonal`` matrices; the
3-D low band L satisfies L L^T = I; and per transition frame 0 has spatial factor r = 4 (gain 2 on a
constant video) while every other frame has r = 8 (gain 2 sqrt 2), so stage i has gain 2^i
(frame 0) and (2 sqrt 2)^i. pyrflow_ref.resample's matrices, Resampler and gains are these.
"""

import sympy as sp

from pyrflow_ref import resample

from ._core import assert_close, assert_matrix_equal, assert_orthogonal, assert_zero, derivation
from ._resamplers import CLOSED_FORMS, axis_matrix, dct2, rational_matrices, separable

AXIS_SIZES = ((2, 2), (4, 2), (6, 2), (3, 3), (6, 3), (4, 4))  # (n, factor)
FRAMES = (3, 5)
SHAPES = ((3, 2, 2), (5, 4, 2))
# Families without a fixed matrix, and the proof that covers each.
OTHER_FAMILIES = {"orthogonal": "rational Cayley matrices below and in projection", "avgpool": "pyramid_flow"}


def _check_gain(family, shape):
    """Low band of a constant video: r fine elements of weight 1/sqrt(r) per coarse element; the code's gains."""
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
    frame_gains = [gains[f * per_frame] for f in range(coarse[0])]
    code = resample.Resampler(family, (2, 2, 2), first_frame=True).gain(coarse[0])
    assert_close(code, frame_gains, f"pyrflow_ref Resampler({family!r}).gain({coarse[0]}) = low band of ones")
    pyramid = resample.Pyramid.uniform(family, (2, 2, 2), num_stages=3)
    for stage in range(3):
        want = [2**stage] + [(2 * sp.sqrt(2)) ** stage] * (coarse[0] - 1)
        assert_close(pyramid.gain(stage, coarse[0]), want, f"{family} Pyramid.gain({stage}) = 2^i, (2 sqrt 2)^i")


def prove():
    families, covered = set(resample.FAMILIES), set(CLOSED_FORMS) | set(OTHER_FAMILIES)
    if families != covered:
        raise AssertionError(f"pyrflow_ref.resample.FAMILIES and the proofs' families differ: {families ^ covered}")
    for n, f in AXIS_SIZES:
        for family in CLOSED_FORMS:
            assert_orthogonal(axis_matrix(family, n, f), f"{family} T_{n} T_{n}^T = I (factor {f})")
    for n in sorted({n for n, _ in AXIS_SIZES}):
        assert_close(resample.dct2_matrix(n), dct2(n), f"pyrflow_ref.resample.dct2_matrix({n}) = DCT-II")
        assert_orthogonal(dct2(n), f"DCT-II C_{n} C_{n}^T = I")
    for n in [n for n, f in AXIS_SIZES if f == 2]:
        select = sp.eye(n)[: n // 2, :]
        t = axis_matrix("dct", n)
        assert_matrix_equal(t[: n // 2, :], dct2(n // 2).T * select * dct2(n), f"DCT L_{n} = C^T S C")
    for family in CLOSED_FORMS:
        for f in FRAMES:
            t, _, _ = separable(family, (f, 1, 1), (2, 1, 1))
            assert_orthogonal(t, f"{family} first-frame time transform, F={f}")
        for shape in SHAPES:
            full, low, _ = separable(family, shape)
            assert_orthogonal(full, f"{family} separable transform {shape} orthogonal")
            assert_orthogonal(low, f"{family} separable low band {shape}: L L^T = I")
            _check_gain(family, shape)
    for shape in SHAPES:
        full, low, _ = separable("orthogonal", shape, matrices=rational_matrices(shape, seed=0))
        assert_orthogonal(full, f"orthogonal separable transform {shape} orthogonal")
        assert_orthogonal(low, f"orthogonal separable low band {shape}: L L^T = I")
    return derivation(
        "T = [L; H] orthogonal for Haar and DCT resamplers, with the first-frame rule, separable in (T, H, W).",
        f"pyrflow_ref.resample.haar_matrix / dct_matrix / dct2_matrix equal the closed forms (float64, 1e-12)"
        f" for (n, factor) = {AXIS_SIZES}; each is orthogonal exactly (cos(pi k / 2n) exact radicals, residuals"
        " zero by minimal polynomial), Haar high rows the Helmert zero-sum basis.",
        "DCT resampler T_n = blockdiag(C_{n/2}^T, C_{n/2}^T) C_n: product of orthogonal matrices;"
        " its low rows equal L = C_{n/2}^T S C_n (S keeps the low half).",
        f"Time axis blockdiag(1, T_(F-1)) orthogonal for F = {FRAMES}; Kronecker T_t (x) T_h (x) T_w"
        f" orthogonal and L L^T = I for shapes {SHAPES}: Haar, DCT and exact rational (Cayley) 'orthogonal'"
        " matrices; the code's Resampler down / up / project are L, L^T, L^T L on each.",
        "Low band of the all-ones video: coarse frame 0 gets sqrt(4) = 2, other frames sqrt(8) = 2 sqrt(2);"
        " Haar low rows average exactly r = 4 (frame 0) or r = 8 fine elements; Resampler.gain and"
        " Pyramid.gain (2^i, (2 sqrt 2)^i) are these.",
        f"Every family in pyrflow_ref.resample.FAMILIES is covered ({', '.join(resample.FAMILIES)};"
        f" avgpool in {OTHER_FAMILIES['avgpool']}).",
    )
