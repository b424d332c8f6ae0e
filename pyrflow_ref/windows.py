r"""Stage windows, schedules and step grids (theory §§1, 3 and 3.2).

Stage ``i`` covers the global noise levels :math:`[\sigma_c^{(i)}, \sigma_n^{(i)}]` with
:math:`0 = \sigma_c^{(0)} < \sigma_n^{(0)} = \sigma_c^{(1)} < \dots < \sigma_n^{(S-1)} = 1`:
in orthonormal units the global level is continuous across stages, so ``S - 1`` inner
boundaries describe the whole pyramid.

Default boundaries of the Wan 3-stage pyramid
---------------------------------------------
:data:`WAN_DEFAULT_BOUNDARIES` ``= (5/9, 15/17)``. Wan samples 50 steps on
``linspace(1, 0, 51)`` mapped by the shift :math:`s' = 5s/(1 + 4s)`. After 20 steps
(:math:`s = 0.6`) it is at :math:`15/17 \approx 0.882`, after 40 (:math:`s = 0.2`) at
:math:`5/9 \approx 0.556`. With these boundaries the pyramidal ``20-20-10`` schedule at shift 5
visits exactly Wan's 50 noise levels, so the coarse stages replace Wan's first 40 steps one for
one. Two independent references land close by: Pyramid Flow's windows converted to global
:math:`\sigma` (boundaries 0.5007 and 0.889, :func:`pyrflow_ref.pyramid_flow.stage_constants`), and
spectral calibration on real video (:func:`pyrflow_ref.calibration.calibrate_boundaries`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .natural import varsigma

WAN_DEFAULT_BOUNDARIES = (5 / 9, 15 / 17)
"""Inner boundaries (stage 0/1 and 1/2) of the Wan 3-stage pyramid; see the module docstring."""


class StageWindows:
    r"""Stage windows from their inner boundaries.

    :param boundaries: the ``S - 1`` inner boundaries, strictly increasing inside (0, 1); the full
        list ``(0, ..., 1)`` is accepted too.

    >>> w = StageWindows(WAN_DEFAULT_BOUNDARIES)
    >>> w.num_stages, round(w.sigma_c(1), 4), round(w.sigma_n(1), 4)
    (3, 0.5556, 0.8824)
    """

    def __init__(self, boundaries: Sequence[float] = ()):
        b = [float(v) for v in boundaries]
        if len(b) >= 2 and b[0] == 0.0 and b[-1] == 1.0:
            b = b[1:-1]
        for k, v in enumerate(b):
            if not 0.0 < v < 1.0:
                raise ValueError(f"boundary {k} = {v!r} is not inside (0, 1)")
            if k and v <= b[k - 1]:
                raise ValueError(f"boundaries must be strictly increasing, but boundary {k} = {v!r} <= {b[k - 1]!r}")
        self.boundaries = (0.0, *b, 1.0)

    @property
    def num_stages(self) -> int:
        return len(self.boundaries) - 1

    def sigma_c(self, i: int) -> float:
        """Cleaner end of stage ``i``."""
        return self.boundaries[self._check(i)]

    def sigma_n(self, i: int) -> float:
        """Noisier end of stage ``i``."""
        return self.boundaries[self._check(i) + 1]

    def _check(self, i: int) -> int:
        if not 0 <= i < self.num_stages:
            raise ValueError(f"stage {i} out of range for {self.num_stages} stages")
        return i

    def stage_of(self, sigma: float) -> int:
        """The stage whose window holds ``sigma`` (a boundary belongs to the finer stage)."""
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma = {sigma!r} is not in [0, 1]")
        return max(0, int(np.searchsorted(self.boundaries, sigma, side="left")) - 1)

    def for_schedule(self, steps: Sequence[int]) -> StageWindows:
        """Windows when the coarsest stages of ``steps`` (coarsest first) take 0 steps.

        A skipped stage's window joins the next finer stage, which then starts from pure noise
        (``0-0-50`` is plain sampling at full resolution). Only the coarsest stages may be skipped:
        a stage skipped below a stage with steps would leave its window unvisited.
        """
        steps = tuple(steps)
        if len(steps) != self.num_stages:
            raise ValueError(f"schedule {format_schedule(steps)!r} has {len(steps)} stages, expected {self.num_stages}")
        active = [n > 0 for n in steps]
        if not any(active):
            raise ValueError("schedule takes 0 steps in every stage")
        first = active.index(True)
        if not all(active[first:]):
            raise ValueError(
                f"schedule {format_schedule(steps)!r} skips a stage below one with steps; "
                "only the coarsest stages may take 0 steps"
            )
        return StageWindows(self.boundaries[1 : self.num_stages - first])

    def __repr__(self) -> str:
        return f"StageWindows({list(self.boundaries[1:-1])})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StageWindows) and self.boundaries == other.boundaries


def parse_schedule(text: str, num_stages: int | None = None) -> tuple[int, ...]:
    """Parse ``"20-20-10"`` into steps per stage, coarsest first.

    >>> parse_schedule("20-20-10")
    (20, 20, 10)
    >>> parse_schedule("2-2-1", num_stages=3)
    (2, 2, 1)
    """
    parts = str(text).strip().split("-")
    try:
        steps = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"schedule {text!r} must be non-negative integers joined by '-', like '20-20-10'") from None
    if any(n < 0 for n in steps) or any(not p.strip().isdigit() for p in parts):
        raise ValueError(f"schedule {text!r} must be non-negative integers joined by '-', like '20-20-10'")
    if num_stages is not None and len(steps) != num_stages:
        raise ValueError(f"schedule {text!r} has {len(steps)} stages, expected {num_stages}")
    return steps


def format_schedule(steps: Sequence[int]) -> str:
    """Inverse of :func:`parse_schedule`.

    >>> format_schedule((20, 20, 10))
    '20-20-10'
    """
    return "-".join(str(int(n)) for n in steps)


def shift_sigma(s, shift: float):
    r"""Wan's timestep shift :math:`s' = k s / (1 + (k - 1) s)`; it is :func:`varsigma` with gain :math:`1/k`.

    >>> round(float(shift_sigma(0.6, 5.0)), 6)
    0.882353
    """
    return varsigma(s, 1.0 / shift)


def unshift_sigma(s, shift: float):
    """Inverse of :func:`shift_sigma`."""
    return varsigma(s, shift)


def step_grid(sigma_from: float, sigma_to: float, n: int, shift: float = 1.0) -> np.ndarray:
    """``n + 1`` noise levels from ``sigma_from`` to ``sigma_to``: uniform before the shift, then shifted.

    The grid is uniform in the unshifted variable, so a stage grid at shift ``k`` is a piece of the
    plain grid at shift ``k``; the ends are exact.

    >>> step_grid(1.0, 15 / 17, 2, shift=5.0).round(4)
    array([1.    , 0.9524, 0.8824])
    """
    if n < 1:
        raise ValueError(f"a step grid needs n >= 1 steps, got {n}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = np.linspace(unshift_sigma(sigma_from, shift), unshift_sigma(sigma_to, shift), n + 1)
    grid = np.asarray(shift_sigma(u, shift), dtype=np.float64)
    grid[0], grid[-1] = sigma_from, sigma_to
    return grid
