r"""Pyramid Flow (Jin et al., 2024) as a special case of the orthonormal machinery (theory §3.4).

Pyramid Flow works in *natural* units with the ``avgpool`` pair (mean pool, nearest upsample:
Haar scaled by :math:`\sqrt r`) and a noise level that jumps at stage boundaries. Converting its
levels with :func:`pyrflow_ref.natural.varsigma` (gain :math:`\sqrt r` per transition) makes the global
level continuous, and its jump is the orthonormal ``up_noisy`` written in natural units:

.. math::

    x_s = a\, \mathrm{Up}(y) + b\, n,\quad a = s + \frac{1 - s}{\sqrt r},\quad
    b = (1 - s)\sqrt{\tfrac{r - 1}{r}},\quad e = \frac{s \sqrt r}{s \sqrt r + 1 - s},

with :math:`n` the high-band Haar noise rescaled to unit variance (block correlation
:math:`-1/(r-1)`). For :math:`r = 4`: :math:`a = (1 + s)/2`, :math:`b = \sqrt 3 (1 - s)/2`,
:math:`e = 2s/(1 + s)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .natural import scale_c, sigma_from_varsigma, varsigma
from .resample import Resampler
from .windows import StageWindows


def jump_coefficients(s: float, r: int = 4) -> tuple[float, float, float]:
    """``(a, b, e)`` of the jump into a stage starting at data coefficient ``s``, block size ``r``.

    Derived from the orthonormal transition: the boundary's global level is ``sigma = 1 - s``;
    the coarse stage ends there at natural level ``varsigma(sigma, sqrt r)``.

    >>> [round(v, 5) for v in jump_coefficients(0.5)]
    [0.75, 0.43301, 0.66667]
    """
    g = np.sqrt(r)
    sigma = 1.0 - s
    a = scale_c(sigma, g) / g  # c L^T y = (c / sqrt r) Up(y)
    b = sigma * np.sqrt((r - 1) / r)  # sigma H^T xi = b * (unit-variance high-band noise)
    e = 1.0 - varsigma(sigma, g)
    return float(a), float(b), float(e)


def block_correlation(r: int) -> float:
    """Correlation between two elements of one block of high-band Haar noise (``-1/(r-1)``).

    >>> round(block_correlation(4), 12), round(block_correlation(8), 12)
    (-0.333333333333, -0.142857142857)
    """
    transition = Resampler("haar", (1, 1, r), first_frame=False)
    cov = transition.high(np.eye(r).reshape(r, 1, 1, r)).reshape(r, r)  # (I - P) = H^T H on one block
    return float(cov[0, 1] / cov[0, 0])


def high_band_unit_noise(transition: Resampler, w: np.ndarray) -> np.ndarray:
    """Pyramid Flow's block noise from white ``w``: ``sqrt(r/(r-1)) (I - P) w`` (unit variance)."""
    return np.sqrt(transition.r / (transition.r - 1)) * transition.high(w)


@dataclass(frozen=True)
class Jump:
    """Pyramid Flow's constants at one stage boundary (code stage index ``stage``, 0 = lowest)."""

    stage: int
    start_sigma: float  # the code's original (uncorrected) start sigma of this stage
    corrected_start_sigma: float
    alpha: float
    beta: float


def stage_constants(
    stage_range: Sequence[float] = (0, 1 / 3, 2 / 3, 1), gamma: float = 1 / 3, num_train_timesteps: int = 1000
) -> tuple[list[Jump], StageWindows]:
    r"""Pyramid Flow's jump constants and its windows in global :math:`\sigma`, from this machinery.

    Mirrors its scheduler: sigmas on ``linspace(1, T, T)[::-1] / T``, stage ``k`` starting at index
    ``int(stage_range[k] * T)``, block size :math:`r = 1 + 1/\gamma`. Returns the jumps into stages
    ``1..K-1`` and the stage windows converted to the continuous global level (stage ``k`` has
    cumulative gain :math:`\sqrt r^{\,K-1-k}`).

    >>> jumps, windows = stage_constants()
    >>> [(round(j.alpha, 5), round(j.beta, 5)) for j in jumps]
    [(0.59988, 0.69303), (0.74963, 0.43366)]
    >>> [round(b, 4) for b in windows.boundaries]
    [0.0, 0.5007, 0.889, 1.0]
    """
    t = num_train_timesteps
    sigmas = np.linspace(1, t, t)[::-1] / t
    r = 1.0 + 1.0 / gamma
    g = np.sqrt(r)
    k_stages = len(stage_range) - 1
    jumps, boundaries = [], []
    for k in range(1, k_stages):
        start = float(sigmas[int(stage_range[k] * t)])  # = the lower stage's end level, natural units
        sigma = float(sigma_from_varsigma(start, g))  # global level of the boundary
        a, b, _ = jump_coefficients(1.0 - sigma, r)
        jumps.append(Jump(k, start, sigma, a, b))
        boundaries.append(float(sigma_from_varsigma(start, g ** (k_stages - k))))
    return jumps, StageWindows(sorted(boundaries))
