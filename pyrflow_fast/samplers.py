r"""Torch twin of :mod:`pyrflow_ref.samplers`: the same samplers over the same model contract.

``model(x_nat, t, cond) -> v_hat`` with ``x_nat = x / c`` ``(B, C, F, H, W)`` and per-frame
timesteps ``t = 1000 * varsigma`` ``(B, F)`` (a tensor on the sample's device, in
``promote_types(x.dtype, float32)``). Step grids and windows are the reference's host-side
floats. Samples keep the dtype of ``noise``; gains, timesteps and the fused ops compute in at
least float32.

Fast paths (Triton on CUDA, torch twins elsewhere, :mod:`pyrflow_fast.kernels`): every Euler
step is one fused CFG-combine + bridge + update (a :func:`cfg` model is evaluated as its two
branches so the combine fuses too), and Haar transitions are one fused ``up_noisy`` pass. With
``rng`` a ``torch.Generator`` (or None) on the Triton path the transition noise is generated
in-kernel from a seed drawn from ``rng``, so it never touches memory; a callable ``rng`` always
supplies the noise tensor, which is how two implementations are fed identical noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pyrflow_ref.samplers import plan_schedule
from pyrflow_ref.windows import StageWindows, step_grid

from . import kernels
from .natural import bridge_velocity, per_frame, scale_c, varsigma
from .process import pyramidal_x, rho, x0_from_velocity, y_c, y_n
from .resample import Pyramid, Resampler

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Callback = Callable[[int, int, float, torch.Tensor], None]
NoiseSource = torch.Generator | Callable[[tuple[int, ...]], torch.Tensor] | None

__all__ = ["Guided", "cfg", "model_velocity", "sample_euler", "sample_few_step", "sample_plain", "timesteps"]


def timesteps(sigma, g, batch: int) -> torch.Tensor:
    r"""Per-frame model timesteps :math:`1000\,\varsigma(\sigma, g)`, shape ``(B, F)``, on ``g``'s device and dtype.

    >>> timesteps(0.5, torch.tensor([1.0, 2.0], dtype=torch.float64), 2).tolist()  # gain 2: varsigma = 1/3
    [[500.0, 333.3333333333333], [500.0, 333.3333333333333]]
    """
    g = torch.as_tensor(g, dtype=None if torch.is_tensor(g) else torch.float64)
    s = torch.as_tensor(sigma, dtype=g.dtype, device=g.device).reshape(-1, 1).expand(batch, 1)
    return 1000.0 * varsigma(s, g[None, :])


def _gain(g, x: torch.Tensor) -> torch.Tensor:
    """A per-frame gain as a tensor on ``x``'s device, in at least float32."""
    return torch.as_tensor(g, dtype=kernels.torch_ops.compute_dtype(x.dtype), device=x.device)


def _natural_input(x: torch.Tensor, sigma, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the model sees: ``(x / c, t)``."""
    s, gg = per_frame(sigma, g, x.ndim)
    return x / scale_c(s, gg), timesteps(sigma, g, x.shape[0])


def model_velocity(model: Model, x: torch.Tensor, sigma, g, cond: Any = None) -> torch.Tensor:
    r""":math:`dx/d\sigma` of a stage sample ``x`` at global level ``sigma`` with per-frame gain ``g``."""
    g = _gain(g, x)
    v_hat = model(*_natural_input(x, sigma, g), cond)
    return bridge_velocity(x, *per_frame(sigma, g, x.ndim), v_hat)


@dataclass(frozen=True)
class Guided:
    r"""A classifier-free-guided model (returned by :func:`cfg`); callable as a :data:`Model`."""

    model: Model
    scale: float
    uncond: Any = None

    def __call__(self, x_nat: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        u = self.model(x_nat, t, self.uncond)
        return u + self.scale * (self.model(x_nat, t, cond) - u)


def cfg(model: Model, scale: float, uncond: Any = None) -> Guided:
    r"""Classifier-free guidance :math:`\hat v_u + w(\hat v_c - \hat v_u)` on the natural velocity.

    The bridge is affine in :math:`\hat v` with a condition-free offset, so guiding :math:`\hat v`
    guides :math:`dx/d\sigma` identically; the samplers fuse the combine into the Euler update.
    """
    return Guided(model, scale, uncond)


def _euler_step(model: Model, x: torch.Tensor, sigma: float, dsigma: float, g: torch.Tensor, cond: Any) -> torch.Tensor:
    """``x + dsigma * dx/dsigma`` through the fused CFG + Euler op."""
    x_nat, t = _natural_input(x, sigma, g)
    if isinstance(model, Guided):
        v_u = model.model(x_nat, t, model.uncond)
        return kernels.cfg_euler(x, model.model(x_nat, t, cond), v_u, sigma, dsigma, g, model.scale)
    return kernels.cfg_euler(x, model(x_nat, t, cond), None, sigma, dsigma, g)


def _draw(rng: NoiseSource, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """White noise of ``shape`` on ``like``'s device and dtype."""
    if callable(rng):
        return torch.as_tensor(rng(tuple(shape))).to(like)
    return torch.randn(shape, generator=rng, dtype=like.dtype, device=like.device)


def _transition(level: Resampler, x: torch.Tensor, s: float, rng: NoiseSource) -> torch.Tensor:
    """``up_noisy`` to the finer stage; in-kernel noise on the Triton path of a Haar level."""
    if level.fused and not callable(rng) and kernels.use_triton(x):
        seed = int(torch.randint(2**31 - 1, (), generator=rng, device=rng.device if rng is not None else "cpu"))
        return kernels.haar_up_noisy(x, s, None, level.factors, level.first_frame, seed=seed)
    return level.up_noisy(x, s, _draw(rng, level.fine_shape(tuple(x.shape)), x))


def sample_euler(
    model: Model,
    noise: torch.Tensor,
    pyramid: Pyramid,
    windows: StageWindows,
    steps: str | Sequence[int],
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Pyramidal Euler sampling from pure noise to a stage-0 sample; see :func:`pyrflow_ref.samplers.sample_euler`.

    :param rng: a ``torch.Generator`` (on the sample's device), or a callable ``shape -> white
        noise`` (to feed identical noise to two implementations), for the high-band noise of each
        transition.
    """
    steps, eff, top = plan_schedule(pyramid, windows, steps)
    x = torch.as_tensor(noise)
    for i in range(top, -1, -1):
        n = steps[pyramid.num_stages - 1 - i]
        grid = step_grid(eff.sigma_n(i), eff.sigma_c(i), n, shift)
        g = _gain(pyramid.gain(i, x.shape[-3]), x)
        for k in range(n):
            x = _euler_step(model, x, float(grid[k]), float(grid[k + 1] - grid[k]), g, cond)
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
        if i > 0:
            x = _transition(pyramid.levels[i - 1], x, eff.sigma_c(i), rng)
    return x


def sample_plain(
    model: Model,
    noise: torch.Tensor,
    steps: int,
    *,
    cond: Any = None,
    shift: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Plain (unpyramided) Euler sampling: :func:`sample_euler` with a single stage."""
    return sample_euler(
        model, noise, Pyramid(()), StageWindows(()), (steps,), cond=cond, shift=shift, callback=callback
    )


def sample_few_step(
    model: Model,
    noise: torch.Tensor,
    pyramid: Pyramid,
    windows: StageWindows,
    steps: str | Sequence[int],
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Few-step x0-prediction sampling (distilled generators, e.g. ``"2-2-1"``), no CFG.

    See :func:`pyrflow_ref.samplers.sample_few_step`; ``rng`` as in :func:`sample_euler`.
    """
    steps, eff, top = plan_schedule(pyramid, windows, steps)
    x = torch.as_tensor(noise)
    noise_dtype = x.dtype
    for i in range(top, -1, -1):
        n = steps[pyramid.num_stages - 1 - i]
        sc, sn = eff.sigma_c(i), eff.sigma_n(i)
        grid = step_grid(sn, sc, n, shift)
        g = pyramid.gain(i, x.shape[-3])
        project = pyramid.levels[i].project if i < top else None
        for k in range(n):
            v = model_velocity(model, x, float(grid[k]), g, cond)
            x0 = x0_from_velocity(x, v, float(grid[k]), sc, sn, project)
            if k + 1 < n:
                eps = _draw(rng, tuple(x.shape), x)
                coarse = project(x0) if project is not None else torch.zeros_like(x0)
                x = pyramidal_x(y_c(x0, eps, sc), y_n(coarse, eps, sn), rho(float(grid[k + 1]), sc, sn))
            elif i > 0:
                level = pyramid.levels[i - 1]
                fine = level.fine_shape(tuple(x.shape))
                x = y_n(level.up(x0, fine), _draw(rng, fine, x), sc)
            else:
                x = x0
            x = x.to(noise_dtype)  # the velocity is computed in at least float32
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
    return x
