r"""The pyramidal forward process in orthonormal units (theory §3).

Inside stage :math:`i` with window :math:`[\sigma_c, \sigma_n]` and coupled white noise
:math:`\epsilon` at the stage's resolution:

.. math::

    y_c &= (1 - \sigma_c)\, x_0^{(i)} + \sigma_c \epsilon, \\
    y_n &= (1 - \sigma_n)\, \mathrm{up}(x_0^{(i+1)}) + \sigma_n \epsilon, \\
    \rho &= \frac{\sigma - \sigma_c}{\sigma_n - \sigma_c}, \qquad
    x = (1 - \rho) y_c + \rho y_n, \qquad
    \frac{dx}{d\sigma} = \frac{y_n - y_c}{\sigma_n - \sigma_c}.

The coarsest stage has :math:`\sigma_n = 1`, so :math:`y_n = \epsilon` with no special case.
Per-stage clean signals come from :func:`clean_pyramid_latent` (Definition 1) or
:func:`clean_pyramid_pixel` (Definition 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .resample import Pyramid, batch_scalar
from .windows import StageWindows


def rho(sigma, sigma_c: float, sigma_n: float):
    r"""Local level :math:`(\sigma - \sigma_c) / (\sigma_n - \sigma_c)` inside a window."""
    return (np.asarray(sigma, dtype=np.float64) - sigma_c) / (sigma_n - sigma_c)


def y_c(x0: np.ndarray, eps: np.ndarray, sigma_c: float) -> np.ndarray:
    """Cleaner end of the stage: all of the stage's detail, noise level ``sigma_c``."""
    return (1 - sigma_c) * x0 + sigma_c * eps


def y_n(x0_up: np.ndarray, eps: np.ndarray, sigma_n: float) -> np.ndarray:
    """Noisier end: only the next coarser stage's signal ``up(x0^(i+1))``, noise level ``sigma_n``."""
    return (1 - sigma_n) * x0_up + sigma_n * eps


def pyramidal_x(yc: np.ndarray, yn: np.ndarray, rho_) -> np.ndarray:
    """The stage sample ``(1 - rho) y_c + rho y_n`` (``rho`` scalar or per-sample ``(B,)``)."""
    r = batch_scalar(rho_, yc.ndim)
    return (1 - r) * yc + r * yn


def target(yc: np.ndarray, yn: np.ndarray, sigma_c: float, sigma_n: float) -> np.ndarray:
    r"""Regression target :math:`dx/d\sigma = (y_n - y_c)/(\sigma_n - \sigma_c)`."""
    return (yn - yc) / (sigma_n - sigma_c)


def coarse_signal_up(x0s: Sequence[np.ndarray], stage: int, pyramid: Pyramid) -> np.ndarray:
    """``up(x0^(stage+1))`` at the stage's shape; zeros at the coarsest stage (its ``y_n`` is pure noise)."""
    if stage + 1 >= len(x0s):
        return np.zeros_like(x0s[stage])
    return pyramid.levels[stage].up(x0s[stage + 1], np.shape(x0s[stage]))


def forward_sample(
    x0s: Sequence[np.ndarray],
    eps: np.ndarray,
    sigma,
    stage: int,
    windows: StageWindows,
    pyramid: Pyramid,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy stage sample and its target.

    :param x0s: clean signal of every stage, finest first (orthonormal units).
    :param eps: white noise at the shape of stage ``stage``.
    :param sigma: global noise level(s) inside the stage's window, scalar or ``(B,)``.
    :returns: ``(x, dx/dsigma)``.
    """
    sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
    s = np.asarray(sigma, dtype=np.float64)
    if np.any(s < sc) or np.any(s > sn):
        raise ValueError(f"sigma {sigma!r} is outside stage {stage}'s window [{sc}, {sn}]")
    yc = y_c(x0s[stage], eps, sc)
    yn = y_n(coarse_signal_up(x0s, stage, pyramid), eps, sn)
    return pyramidal_x(yc, yn, rho(s, sc, sn)), target(yc, yn, sc, sn)


def clean_pyramid_latent(x0: np.ndarray, pyramid: Pyramid) -> list[np.ndarray]:
    """Definition 1: :math:`x_0^{(i+1)} = \\mathrm{down}(x_0^{(i)})`, finest first."""
    out = [np.asarray(x0)]
    for level in pyramid.levels:
        out.append(level.down(out[-1]))
    return out


def clean_pyramid_pixel(
    video: np.ndarray,
    pyramid: Pyramid,
    encode: Callable[[np.ndarray], np.ndarray],
    pixel_pyramid: Pyramid,
) -> list[np.ndarray]:
    r"""Definition 2: downsample the pixel video, encode each level, apply the gain :math:`g_i`.

    :param video: ``(B, C_pix, F_pix, H_pix, W_pix)``.
    :param pyramid: the latent pyramid (it supplies the per-frame gains to orthonormal units).
    :param encode: the encoder (the VAE; a linear map in the reference), natural scale out.
    :param pixel_pyramid: the pixel-space downsamplers (e.g. ``avgpool`` with the first-frame rule,
        mean pooling being the anti-aliasing box filter).
    """
    if pixel_pyramid.num_stages != pyramid.num_stages:
        raise ValueError(f"pixel pyramid has {pixel_pyramid.num_stages} stages, latent pyramid {pyramid.num_stages}")
    levels = [np.asarray(video)]
    for level in pixel_pyramid.levels:
        levels.append(level.down(levels[-1]))
    out = []
    for i, v in enumerate(levels):
        z = encode(v)
        out.append(z * pyramid.gain(i, z.shape[-3])[:, None, None])
    for i, (z, expected) in enumerate(zip(out, pyramid.shapes(out[0].shape))):
        if z.shape != expected:
            raise ValueError(f"encoded level {i} has shape {z.shape}, the latent pyramid expects {expected}")
    return out


def x0_from_velocity(
    x: np.ndarray,
    v: np.ndarray,
    sigma,
    sigma_c: float,
    sigma_n: float,
    project: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    r"""Clean stage signal from the stage sample and its velocity (Definition 1).

    .. math::

        x - \sigma \frac{dx}{d\sigma} = P x_0 + k (I - P) x_0, \qquad
        k = \frac{(1 - \sigma_c)\sigma_n}{\sigma_n - \sigma_c},

    independent of :math:`\sigma` inside the stage. ``project`` is :math:`P` of the level below
    the stage; it is not needed when :math:`k = 1` (finest and coarsest stages).
    """
    d = x - batch_scalar(sigma, x.ndim) * v
    k = (1 - sigma_c) * sigma_n / (sigma_n - sigma_c)
    if np.isclose(k, 1.0, rtol=0, atol=1e-15):
        return d
    if project is None:
        raise ValueError(f"a stage with window [{sigma_c}, {sigma_n}] needs the projection P to decode x0")
    pd = project(d)
    return pd + (d - pd) / k
