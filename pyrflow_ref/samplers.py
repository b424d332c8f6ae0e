r"""Samplers over one model contract (theory §3.3).

The model contract, shared by every sampler and by the fast twin:

``model(x_nat, t, cond) -> v_hat``

- ``x_nat``: the stage sample at natural scale, :math:`x / c`, shape ``(B, C, F, H, W)``;
- ``t``: per-frame timesteps :math:`1000\,\varsigma`, shape ``(B, F)`` (frame 0 has its own gain);
- ``cond``: conditioning (text embeddings, a label, or ``None``);
- ``v_hat``: the natural velocity, same shape as ``x_nat``.

The samplers turn it into :math:`dx/d\sigma` with the exact bridge of
:mod:`pyrflow_ref.natural`, so a backbone never sees orthonormal units. Schedules are steps per
stage, coarsest first (``"20-20-10"``); coarsest stages may take 0 steps
(:meth:`pyrflow_ref.windows.StageWindows.for_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .natural import bridge_velocity, per_frame, scale_c, varsigma
from .process import pyramidal_x, rho, x0_from_velocity, y_c, y_n
from .resample import Pyramid
from .windows import StageWindows, parse_schedule, step_grid

Model = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
Callback = Callable[[int, int, float, np.ndarray], None]
NoiseSource = np.random.Generator | Callable[[tuple[int, ...]], np.ndarray] | None


def timesteps(sigma, g: np.ndarray, batch: int) -> np.ndarray:
    r"""Per-frame model timesteps :math:`1000\,\varsigma(\sigma, g)`, shape ``(B, F)``."""
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(-1, 1), (batch, 1))
    return 1000.0 * varsigma(s, np.asarray(g, dtype=np.float64)[None, :])


def model_velocity(model: Model, x: np.ndarray, sigma, g: np.ndarray, cond: Any = None) -> np.ndarray:
    r""":math:`dx/d\sigma` of a stage sample ``x`` at global level ``sigma`` with per-frame gain ``g``."""
    s, gg = per_frame(sigma, g, x.ndim)
    v_hat = model(x / scale_c(s, gg), timesteps(sigma, g, x.shape[0]), cond)
    return bridge_velocity(x, s, gg, v_hat)


def cfg(model: Model, scale: float, uncond: Any = None) -> Model:
    r"""Classifier-free guidance :math:`\hat v_u + w(\hat v_c - \hat v_u)` on the natural velocity.

    The bridge is affine in :math:`\hat v` with a condition-free offset, so guiding :math:`\hat v`
    guides :math:`dx/d\sigma` identically.
    """

    def guided(x_nat: np.ndarray, t: np.ndarray, cond: Any) -> np.ndarray:
        u = model(x_nat, t, uncond)
        return u + scale * (model(x_nat, t, cond) - u)

    return guided


def _noise_fn(rng: NoiseSource) -> Callable[[tuple[int, ...]], np.ndarray]:
    if rng is None:
        rng = np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal
    return rng


def plan_schedule(pyramid: Pyramid, windows: StageWindows, steps) -> tuple[tuple[int, ...], StageWindows, int]:
    """``(steps, effective windows, top)`` of a schedule; ``top`` is the coarsest stage with steps.

    The noise a sampler starts from has the shape of stage ``top``.
    """
    if pyramid.num_stages != windows.num_stages:
        raise ValueError(f"pyramid has {pyramid.num_stages} stages but the windows have {windows.num_stages}")
    if isinstance(steps, str):
        steps = parse_schedule(steps, pyramid.num_stages)
    steps = tuple(int(n) for n in steps)
    eff = windows.for_schedule(steps)
    return steps, eff, eff.num_stages - 1


def sample_euler(
    model: Model,
    noise: np.ndarray,
    pyramid: Pyramid,
    windows: StageWindows,
    steps: str | Sequence[int],
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """Pyramidal Euler sampling from pure noise to a stage-0 sample.

    :param noise: white noise at the shape of the coarsest stage that takes steps.
    :param steps: steps per stage, coarsest first, e.g. ``"20-20-10"``.
    :param shift: timestep shift of every stage grid (:func:`pyrflow_ref.windows.step_grid`).
    :param rng: a Generator, or a callable ``shape -> white noise`` (to feed identical noise to
        two implementations), for the high-band noise of each transition.
    :param callback: called as ``callback(stage, step, sigma, x)`` after every step.
    """
    steps, eff, top = plan_schedule(pyramid, windows, steps)
    draw = _noise_fn(rng)
    x = np.asarray(noise, dtype=np.float64)
    for i in range(top, -1, -1):
        n = steps[pyramid.num_stages - 1 - i]
        grid = step_grid(eff.sigma_n(i), eff.sigma_c(i), n, shift)
        g = pyramid.gain(i, x.shape[-3])
        for k in range(n):
            x = x + (grid[k + 1] - grid[k]) * model_velocity(model, x, grid[k], g, cond)
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
        if i > 0:
            level = pyramid.levels[i - 1]
            x = level.up_noisy(x, eff.sigma_c(i), draw(level.fine_shape(x.shape)))
    return x


def sample_plain(
    model: Model,
    noise: np.ndarray,
    steps: int,
    *,
    cond: Any = None,
    shift: float = 1.0,
    callback: Callback | None = None,
) -> np.ndarray:
    """Plain (unpyramided) Euler sampling: :func:`sample_euler` with a single stage."""
    return sample_euler(
        model, noise, Pyramid(()), StageWindows(()), (steps,), cond=cond, shift=shift, callback=callback
    )


def sample_few_step(
    model: Model,
    noise: np.ndarray,
    pyramid: Pyramid,
    windows: StageWindows,
    steps: str | Sequence[int],
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """Few-step x0-prediction sampling (distilled generators, e.g. ``"2-2-1"``), no CFG.

    Stage ``i`` with ``n`` steps evaluates the model at the first ``n`` levels of its grid. Each
    evaluation decodes the clean stage signal (:func:`pyrflow_ref.process.x0_from_velocity`), then
    re-noises it: to the next level of the stage with the stage's forward process, or across the
    boundary as the finer stage's :math:`y_n = (1 - \\sigma) \\mathrm{up}(x_0) + \\sigma \\epsilon`.
    Returns the last clean prediction.
    """
    steps, eff, top = plan_schedule(pyramid, windows, steps)
    draw = _noise_fn(rng)
    x = np.asarray(noise, dtype=np.float64)
    for i in range(top, -1, -1):
        n = steps[pyramid.num_stages - 1 - i]
        sc, sn = eff.sigma_c(i), eff.sigma_n(i)
        grid = step_grid(sn, sc, n, shift)
        g = pyramid.gain(i, x.shape[-3])
        project = pyramid.levels[i].project if i < top else None
        for k in range(n):
            v = model_velocity(model, x, grid[k], g, cond)
            x0 = x0_from_velocity(x, v, grid[k], sc, sn, project)
            if k + 1 < n:
                eps = draw(x.shape)
                coarse = project(x0) if project is not None else np.zeros_like(x0)
                x = pyramidal_x(y_c(x0, eps, sc), y_n(coarse, eps, sn), rho(grid[k + 1], sc, sn))
            elif i > 0:
                level = pyramid.levels[i - 1]
                fine = level.fine_shape(x.shape)
                x = y_n(level.up(x0, fine), draw(fine), sc)
            else:
                x = x0
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
    return x
