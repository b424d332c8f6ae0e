r"""Orthonormal resamplers between pyramid stages (theory §2).

A resampler between a fine stage (:math:`N_i` elements) and a coarse stage (:math:`N_{i+1}`
elements) is an orthogonal matrix :math:`T = [L; H]` whose first rows :math:`L` are the low band:

.. math::

    L L^\top = I,\qquad H H^\top = I,\qquad L H^\top = 0,\qquad L^\top L + H^\top H = I.

``down(x) = L x``, ``up(y) = L^T y`` and ``project(x) = P x`` with :math:`P = L^\top L`, the
orthogonal projection onto the low band. :math:`H` is never needed explicitly: for white
:math:`w`, :math:`(I - P) w` has covariance :math:`H^\top H`.

The transform is separable over the last three axes ``(F, H, W)`` of a ``(..., F, H, W)`` array,
with a factor per axis (1 leaves the axis alone). Under the *first-frame rule* (Wan's causal VAE
encodes frame 0 alone) frame 0 passes through the time axis unchanged and frames ``1..F-1`` are
resampled, so ``F = 1 + factor * k`` frames become ``1 + k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

FAMILIES = ("haar", "dct", "orthogonal", "avgpool")
TRANSITION_FAMILIES = ("haar", "dct")
"""The families a pyramid's stage transitions may use: orthonormal (exact ``up_noisy``) and fixed
(no per-axis matrices to store), as opposed to ``orthogonal`` (user matrices) and ``avgpool``."""
AXES = ("frames", "height", "width")
_ORTHO_TOL = 1e-10


def _helmert(f: int) -> np.ndarray:
    """Orthonormal basis of the zero-sum vectors of length ``f`` ((f-1) x f)."""
    rows = []
    for k in range(1, f):
        row = np.zeros(f)
        row[:k] = 1.0
        row[k] = -k
        rows.append(row / np.sqrt(k * (k + 1)))
    return np.array(rows).reshape(f - 1, f)


@cache
def haar_matrix(n: int, factor: int = 2) -> np.ndarray:
    r"""Orthonormal block-Haar matrix, low band first.

    Low rows are block sums over ``factor`` consecutive elements divided by
    :math:`\sqrt{\text{factor}}`; high rows are normalised differences inside each block
    (for factor 2: PyWavelets' ``haar`` detail rows :math:`(x_{2k} - x_{2k+1})/\sqrt 2`).

    >>> haar_matrix(2)
    array([[ 0.70710678,  0.70710678],
           [ 0.70710678, -0.70710678]])
    """
    _check_divisible(n, factor, "length")
    m = n // factor
    low = np.kron(np.eye(m), np.full((1, factor), 1.0 / np.sqrt(factor)))
    if factor == 2:
        high = np.kron(np.eye(m), np.array([[1.0, -1.0]]) / np.sqrt(2.0))
    else:
        high = np.kron(np.eye(m), _helmert(factor))
    out = np.vstack([low, high])
    out.setflags(write=False)
    return out


def dct2_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` (rows are basis functions, ``C @ x`` = coefficients)."""
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * j + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


@cache
def dct_matrix(n: int, factor: int = 2) -> np.ndarray:
    r"""Orthonormal DCT resampler, low band first.

    :math:`L = C_{n/f}^\top S\, C_n`: take the DCT-II coefficients, keep the lowest ``n / factor``,
    invert at the shorter length. The high rows span the discarded coefficients (inverted at
    length ``n - n / factor``).
    """
    _check_divisible(n, factor, "length")
    m = n // factor
    c = dct2_matrix(n)
    low = dct2_matrix(m).T @ c[:m]
    high = dct2_matrix(n - m).T @ c[m:] if n > m else np.zeros((0, n))
    out = np.vstack([low, high])
    out.setflags(write=False)
    return out


def check_orthogonal(matrix: np.ndarray, name: str = "matrix") -> np.ndarray:
    """Return ``matrix`` as float64 if it is square and orthogonal, else raise ``ValueError``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
    err = np.abs(m @ m.T - np.eye(m.shape[0])).max() if m.size else 0.0
    if err > _ORTHO_TOL:
        raise ValueError(f"{name} is not orthogonal: max |M M^T - I| = {err:.3g} (expected <= {_ORTHO_TOL})")
    return m


def _check_divisible(n: int, factor: int, what: str) -> None:
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if n < 0 or n % factor:
        raise ValueError(f"{what} {n} is not divisible by factor {factor}")


# twin: pyrflow_fast.resample._apply
def _apply(x: np.ndarray, m: np.ndarray, axis: int) -> np.ndarray:
    """Multiply ``m`` into ``x`` along ``axis``."""
    # A contiguous copy keeps the product on BLAS; strided operands fall back to a slow loop.
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, -1)) @ m.T, -1, axis)


# twin: pyrflow_fast.resample.Resampler
@dataclass(frozen=True)
class Resampler:
    r"""One stage transition: separable resampling of the last three axes ``(F, H, W)``.

    :param family: ``"haar"``, ``"dct"``, ``"orthogonal"`` (user matrices) or ``"avgpool"``
        (Pyramid Flow's mean-pool / nearest pair, :math:`A = L/\sqrt r`, :math:`U = \sqrt r L^\top`;
        *not* orthonormal, kept to reproduce Pyramid Flow).
    :param factors: per-axis factors ``(T, H, W)``, each a positive integer.
    :param first_frame: apply the first-frame rule on the time axis.
    :param matrices: for ``"orthogonal"``: one orthogonal matrix per axis (``None`` for an axis
        with factor 1), low band in the first ``n / factor`` rows. On the time axis under the
        first-frame rule the matrix acts on frames ``1..F-1``.

    >>> r = Resampler("haar", (2, 2, 2))
    >>> r.coarse_shape((1, 16, 5, 4, 8))
    (1, 16, 3, 2, 4)
    >>> r.gain(3)
    array([2.        , 2.82842712, 2.82842712])
    """

    family: str = "haar"
    factors: tuple[int, int, int] = (2, 2, 2)
    first_frame: bool = True
    matrices: tuple | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown resampler family {self.family!r}; expected one of {FAMILIES}")
        factors = tuple(int(f) for f in self.factors)
        if len(factors) != 3 or any(f < 1 for f in factors):
            raise ValueError(f"factors must be three positive integers (T, H, W), got {self.factors!r}")
        object.__setattr__(self, "factors", factors)
        if self.family == "orthogonal":
            if self.matrices is None or len(self.matrices) != 3:
                raise ValueError("family 'orthogonal' needs matrices=(M_T, M_H, M_W), one per axis")
            mats = []
            for axis, f, m in zip(AXES, factors, self.matrices):
                if m is None:
                    if f != 1:
                        raise ValueError(f"no matrix given for axis {axis!r} with factor {f}")
                    mats.append(None)
                    continue
                m = check_orthogonal(m, f"matrix for axis {axis!r}")
                _check_divisible(m.shape[0], f, f"matrix size for axis {axis!r}")
                mats.append(m)
            object.__setattr__(self, "matrices", tuple(mats))
        elif self.matrices is not None:
            raise ValueError(f"matrices are only accepted with family 'orthogonal', not {self.family!r}")

    # ----------------------------------------------------------------- shapes and gains
    def coarse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape after ``down``; raises ``ValueError`` if ``shape`` does not divide."""
        if len(shape) < 3:
            raise ValueError(f"expected an array (..., F, H, W), got shape {tuple(shape)}")
        *lead, f, h, w = (int(s) for s in shape)
        ft, fh, fw = self.factors
        if self.first_frame:
            if f < 1 or (f - 1) % ft:
                raise ValueError(
                    f"frame count {f} does not fit the first-frame rule with time factor {ft}: "
                    f"expected 1 + {ft} k frames"
                )
            fc = 1 + (f - 1) // ft
        else:
            _check_divisible(f, ft, "frame count")
            fc = f // ft
        _check_divisible(h, fh, "height")
        _check_divisible(w, fw, "width")
        return (*lead, fc, h // fh, w // fw)

    @property
    def r(self) -> int:
        """Elements merged per coarse element away from frame 0."""
        return int(np.prod(self.factors))

    def gain(self, num_frames: int) -> np.ndarray:
        r"""Per-frame gain of a smooth signal over this transition, for ``num_frames`` *coarse* frames.

        :math:`\sqrt r` for orthonormal families (frame 0 has :math:`r = f_H f_W` under the
        first-frame rule); 1 for ``avgpool``, which keeps natural units.
        """
        if self.family == "avgpool":
            return np.ones(num_frames)
        g = np.full(num_frames, np.sqrt(self.r), dtype=np.float64)
        if self.first_frame and num_frames:
            g[0] = np.sqrt(self.factors[1] * self.factors[2])
        return g

    # ----------------------------------------------------------------- per-axis matrices
    def _low(self, axis: int, n: int) -> np.ndarray:
        """Low-band rows for an axis of length ``n`` (frames 1.. on the first-frame time axis)."""
        f = self.factors[axis]
        if self.family == "orthogonal":
            m = self.matrices[axis]
            if m is None:
                return np.eye(n)
            if m.shape[0] != n:
                raise ValueError(f"matrix for axis {AXES[axis]!r} has size {m.shape[0]}, but the axis has length {n}")
            return m[: n // f]
        if f == 1:
            return np.eye(n)
        return (haar_matrix if self.family in ("haar", "avgpool") else dct_matrix)(n, f)[: n // f]

    def _axis_ops(self, shape: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(down, up) matrix per axis for a fine array of ``shape``."""
        self.coarse_shape(shape)
        ops = []
        for axis, n in enumerate(shape[-3:]):
            rest = axis == 0 and self.first_frame
            low = self._low(axis, n - 1 if rest else n)
            down, up = low, low.T
            if self.family == "avgpool":
                s = np.sqrt(self.factors[axis])
                down, up = low / s, low.T * s
            if rest:
                down = _block_diag_one(down)
                up = _block_diag_one(up)
            ops.append((down, up))
        return ops

    # ----------------------------------------------------------------- operators
    def down(self, x: np.ndarray) -> np.ndarray:
        """``L x`` (``A x`` for avgpool): fine ``(..., F, H, W)`` to coarse."""
        x = np.asarray(x)
        for axis, (d, _) in enumerate(self._axis_ops(x.shape)):
            x = _apply(x, d.astype(x.dtype, copy=False), axis - 3)
        return x

    def up(self, y: np.ndarray, fine_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``L^T y`` (``U y`` for avgpool). ``fine_shape`` defaults to the exact inverse size."""
        y = np.asarray(y)
        shape = self.fine_shape(y.shape) if fine_shape is None else tuple(fine_shape)
        if self.coarse_shape(shape) != tuple(y.shape):
            raise ValueError(f"coarse array of shape {tuple(y.shape)} does not come from fine shape {shape}")
        for axis, (_, u) in enumerate(self._axis_ops(shape)):
            y = _apply(y, u.astype(y.dtype, copy=False), axis - 3)
        return y

    def fine_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The fine shape whose ``coarse_shape`` is ``shape``."""
        *lead, f, h, w = shape
        ft, fh, fw = self.factors
        fine_f = 1 + (f - 1) * ft if self.first_frame else f * ft
        return (*lead, fine_f, h * fh, w * fw)

    def project(self, x: np.ndarray) -> np.ndarray:
        """``P x = L^T L x``, the orthogonal projection onto the low band."""
        return self.up(self.down(x), np.shape(x))

    def high(self, x: np.ndarray) -> np.ndarray:
        """``(I - P) x``, the high band."""
        return x - self.project(x)

    def up_noisy(self, y: np.ndarray, s, w: np.ndarray) -> np.ndarray:
        r"""Noise-augmented upsampling :math:`L^\top y + s (w - L^\top L w)`, ``w`` white at the fine shape.

        Fills the missing high band with white noise of noise level ``s`` (scalar or per-sample ``(B,)``).
        """
        if self.family == "avgpool":
            raise ValueError(
                "up_noisy needs an orthonormal family; for Pyramid Flow's avgpool jump use "
                "pyrflow_ref.pyramid_flow.jump_coefficients"
            )
        w = np.asarray(w)
        return self.up(y, w.shape) + batch_scalar(s, w.ndim) * self.high(w)


def _block_diag_one(m: np.ndarray) -> np.ndarray:
    """``blockdiag(1, m)``: frame 0 passes through."""
    out = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=m.dtype)
    out[0, 0] = 1.0
    out[1:, 1:] = m
    return out


# twin: pyrflow_fast.resample.batch_scalar
def batch_scalar(s, ndim: int) -> np.ndarray:
    """A scalar or per-sample ``(B,)`` value shaped to broadcast against a ``ndim``-array."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim > 1:
        raise ValueError(f"expected a scalar or a per-sample (B,) array, got shape {s.shape}")
    return s.reshape(s.shape + (1,) * (ndim - s.ndim)) if s.ndim else s


# twin: pyrflow_fast.resample.Pyramid
@dataclass(frozen=True)
class Pyramid:
    """A stack of resamplers: ``transitions[i]`` maps stage ``i`` (finer) to stage ``i + 1`` (coarser).

    Stage 0 is the output resolution; ``num_stages = len(transitions) + 1``.

    >>> p = Pyramid.uniform("haar", (2, 2, 2), num_stages=3)
    >>> [s[-3:] for s in p.shapes((1, 16, 21, 56, 104))]
    [(21, 56, 104), (11, 28, 52), (6, 14, 26)]
    >>> p.gain(2, 6)
    array([4., 8., 8., 8., 8., 8.])
    """

    transitions: tuple[Resampler, ...] = ()

    @classmethod
    def uniform(cls, family: str = "haar", factors=(2, 2, 2), num_stages: int = 3, first_frame: bool = True):
        """``num_stages - 1`` identical transitions."""
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        return cls(tuple(Resampler(family, tuple(factors), first_frame) for _ in range(num_stages - 1)))

    @property
    def num_stages(self) -> int:
        return len(self.transitions) + 1

    def shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Shape at every stage, finest first; ``ValueError`` names the transition that does not divide."""
        out = [tuple(int(s) for s in shape)]
        for i, transition in enumerate(self.transitions):
            try:
                out.append(transition.coarse_shape(out[-1]))
            except ValueError as err:
                raise ValueError(
                    f"shape {out[0]} does not fit {self.num_stages} stages: transition {i} -> {i + 1}: {err}"
                ) from None
        return out

    def gain(self, stage: int, num_frames: int) -> np.ndarray:
        """Cumulative per-frame gain :math:`g_i` of stage ``stage`` with ``num_frames`` frames."""
        g = np.ones(num_frames)
        for transition in self.transitions[:stage]:
            g = g * transition.gain(num_frames)
        return g

    def gains(self, shape: tuple[int, ...]) -> list[np.ndarray]:
        """Per-frame gains of every stage for a stage-0 array of ``shape``."""
        return [self.gain(i, s[-3]) for i, s in enumerate(self.shapes(shape))]

    def stage_of_shape(self, shape: tuple[int, ...], final_shape: tuple[int, ...]) -> int:
        """Index of the stage whose ``(F, H, W)`` equals that of ``shape``."""
        hits = [i for i, s in enumerate(self.shapes(final_shape)) if s[-3:] == tuple(shape[-3:])]
        if len(hits) != 1:
            raise ValueError(f"shape {tuple(shape)} matches {len(hits)} stages of a pyramid over {final_shape}")
        return hits[0]


WAN_PYRAMID = Pyramid.uniform("haar", (2, 2, 2), num_stages=3, first_frame=True)
"""The Wan 3-stage pyramid: orthonormal Haar, 2x in time (first-frame rule), height and width."""
