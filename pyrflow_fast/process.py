r"""Torch twin of :mod:`pyrflow_ref.process`: the pyramidal forward process in orthonormal units.

:func:`y_c`, :func:`y_n` and :func:`target` are plain arithmetic and re-exported from the
reference; the functions that build tensors or resample have torch bodies with the reference's
names, arguments and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pyrflow_ref.process import target, y_c, y_n
from pyrflow_ref.windows import StageWindows

from .resample import Pyramid, batch_scalar

__all__ = [
    "clean_pyramid_latent",
    "clean_pyramid_pixel",
    "coarse_signal_up",
    "forward_sample",
    "pyramidal_x",
    "rho",
    "target",
    "x0_from_velocity",
    "y_c",
    "y_n",
]


def rho(sigma, sigma_c: float, sigma_n: float) -> torch.Tensor:
    r"""Local level :math:`(\sigma - \sigma_c) / (\sigma_n - \sigma_c)` inside a window (float64 for host values).

    >>> rho([0.5, 0.75], 0.5, 1.0).tolist()
    [0.0, 0.5]
    """
    s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
    return (s - sigma_c) / (sigma_n - sigma_c)


def pyramidal_x(yc: torch.Tensor, yn: torch.Tensor, rho_) -> torch.Tensor:
    """The stage sample ``(1 - rho) y_c + rho y_n`` (``rho`` scalar or per-sample ``(B,)``)."""
    r = batch_scalar(rho_, yc.ndim, yc.dtype, yc.device)
    return (1 - r) * yc + r * yn


def coarse_signal_up(x0s: Sequence[torch.Tensor], stage: int, pyramid: Pyramid) -> torch.Tensor:
    """``up(x0^(stage+1))`` at the stage's shape; zeros at the coarsest stage (its ``y_n`` is pure noise)."""
    if stage + 1 >= len(x0s):
        return torch.zeros_like(x0s[stage])
    return pyramid.levels[stage].up(x0s[stage + 1], tuple(x0s[stage].shape))


def forward_sample(
    x0s: Sequence[torch.Tensor],
    eps: torch.Tensor,
    sigma,
    stage: int,
    windows: StageWindows,
    pyramid: Pyramid,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy stage sample and its target ``(x, dx/dsigma)``; see :func:`pyrflow_ref.process.forward_sample`."""
    sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
    s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
    if bool((s < sc).any()) or bool((s > sn).any()):
        raise ValueError(f"sigma {sigma!r} is outside stage {stage}'s window [{sc}, {sn}]")
    yc = y_c(x0s[stage], eps, sc)
    yn = y_n(coarse_signal_up(x0s, stage, pyramid), eps, sn)
    return pyramidal_x(yc, yn, rho(s, sc, sn)), target(yc, yn, sc, sn)


def clean_pyramid_latent(x0: torch.Tensor, pyramid: Pyramid) -> list[torch.Tensor]:
    """Definition 1: :math:`x_0^{(i+1)} = \\mathrm{down}(x_0^{(i)})`, finest first."""
    out = [torch.as_tensor(x0)]
    for level in pyramid.levels:
        out.append(level.down(out[-1]))
    return out


def clean_pyramid_pixel(
    video: torch.Tensor,
    pyramid: Pyramid,
    encode: Callable[[torch.Tensor], torch.Tensor],
    pixel_pyramid: Pyramid,
) -> list[torch.Tensor]:
    r"""Definition 2: downsample the pixel video, encode each level, apply the gain :math:`g_i`.

    See :func:`pyrflow_ref.process.clean_pyramid_pixel`; ``encode`` maps tensors to tensors.
    """
    if pixel_pyramid.num_stages != pyramid.num_stages:
        raise ValueError(f"pixel pyramid has {pixel_pyramid.num_stages} stages, latent pyramid {pyramid.num_stages}")
    levels = [torch.as_tensor(video)]
    for level in pixel_pyramid.levels:
        levels.append(level.down(levels[-1]))
    out = []
    for i, v in enumerate(levels):
        z = encode(v)
        g = torch.as_tensor(pyramid.gain(i, z.shape[-3]), dtype=z.dtype, device=z.device)
        out.append(z * g[:, None, None])
    for i, (z, expected) in enumerate(zip(out, pyramid.shapes(tuple(out[0].shape)))):
        if tuple(z.shape) != expected:
            raise ValueError(f"encoded level {i} has shape {tuple(z.shape)}, the latent pyramid expects {expected}")
    return out


def x0_from_velocity(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_c: float,
    sigma_n: float,
    project: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    r"""Clean stage signal from the stage sample and its velocity (Definition 1).

    :math:`x - \sigma\, dx/d\sigma = P x_0 + k (I - P) x_0` with
    :math:`k = (1 - \sigma_c)\sigma_n / (\sigma_n - \sigma_c)`; see
    :func:`pyrflow_ref.process.x0_from_velocity`.
    """
    d = x - batch_scalar(sigma, x.ndim, x.dtype, x.device) * v
    k = (1 - sigma_c) * sigma_n / (sigma_n - sigma_c)
    if abs(k - 1.0) <= 1e-15:
        return d
    if project is None:
        raise ValueError(f"a stage with window [{sigma_c}, {sigma_n}] needs the projection P to decode x0")
    pd = project(d)
    return pd + (d - pd) / k
