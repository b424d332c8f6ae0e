r"""Samplers over one model contract (theory §3.3).

The model contract, shared by every sampler and by the fast twin:

``model(x_nat, t, cond) -> v_hat``

- ``x_nat``: the stage sample at natural scale, :math:`x / c`, shape ``(B, C, F, H, W)``;
- ``t``: per-frame timesteps :math:`1000\,\varsigma`, shape ``(B, F)`` (frame 0 has its own gain);
- ``cond``: conditioning (text embeddings, a label, or ``None``);
- ``v_hat``: the natural velocity, same shape as ``x_nat``.

The samplers turn it into :math:`dx/d\sigma` with the exact bridge of
:mod:`pyrflow_ref.natural`, so a backbone never sees orthonormal units. Schedules are steps per
stage, coarsest first (``"20-20-10"``), or a :class:`~pyrflow_ref.plan.Plan` built from one;
coarsest stages may take 0 steps (:meth:`pyrflow_ref.windows.StageWindows.for_schedule`).

A ``pyramid`` of ``None`` runs every stage on the noise's own resolution with the plain process
at gain 1 and no resampling at the boundaries: Pyramidal Patchification (PPF), where the
stages differ only in the model, given as one model per stage (finest first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .plan import Plan
from .process import Model, StageProcess, model_velocity, timesteps
from .resample import Pyramid
from .windows import StageWindows

__all__ = [
    "Model",
    "Prediction",
    "guidance_combine",
    "guided",
    "model_velocity",
    "sample_euler",
    "sample_few_step",
    "sample_plain",
    "timesteps",
]

Callback = Callable[[int, int, float, np.ndarray], None]
NoiseSource = np.random.Generator | Callable[[tuple[int, ...]], np.ndarray] | None
Models = Model | Sequence[Model]
"""One model, or one per stage (finest first)."""


def guidance_combine(uncond, cond, scale: float):
    r"""Classifier-free guidance in the standard form :math:`u + w (c - u)` (arrays or tensors).

    >>> float(guidance_combine(1.0, 3.0, 4.5))
    10.0
    """
    return uncond + scale * (cond - uncond)


# twin: pyrflow_fast.samplers.guided
def guided(model: Model, scale: float, uncond: Any = None) -> Model:
    r"""Classifier-free guidance :math:`\hat v_u + w(\hat v_c - \hat v_u)` on the natural velocity.

    The bridge is affine in :math:`\hat v` with a condition-free offset, so guiding :math:`\hat v`
    guides :math:`dx/d\sigma` identically.
    """

    def run(x_nat: np.ndarray, t: np.ndarray, cond: Any) -> np.ndarray:
        return guidance_combine(model(x_nat, t, uncond), model(x_nat, t, cond), scale)

    return run


def _noise_fn(rng: NoiseSource) -> Callable[[tuple[int, ...]], np.ndarray]:
    if rng is None:
        rng = np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal
    return rng


# twin: pyrflow_fast.samplers._stage_model
def _stage_model(model: Models, stage: int) -> Model:
    """The model of ``stage``: ``model`` itself, or its ``stage``-th entry when one is given per stage."""
    return model[stage] if isinstance(model, Sequence) else model


# twin: pyrflow_fast.samplers.stage_process
def stage_process(pyramid: Pyramid | None, plan: Plan, stage: int, frames: int) -> StageProcess:
    """The process a sampler runs ``stage`` with: pyramidal on the plan's effective windows, plain without a pyramid."""
    if pyramid is None:
        return StageProcess.plain()
    return StageProcess.pyramidal(pyramid, plan.effective_windows, stage, frames)


# twin: pyrflow_fast.samplers.sample_euler
def sample_euler(
    model: Models,
    noise: np.ndarray,
    pyramid: Pyramid | None,
    windows: StageWindows,
    schedule: str | Sequence[int] | Plan,
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
    start: tuple[int, float] | None = None,
) -> np.ndarray:
    """Pyramidal Euler sampling from pure noise to a stage-0 sample.

    :param model: the model, or one per stage (finest first).
    :param noise: white noise at the shape of the coarsest stage that takes steps.
    :param pyramid: the resolution pyramid; ``None``: no resampling (PPF, see the module docstring).
    :param schedule: steps per stage, coarsest first, e.g. ``"20-20-10"``, or a :class:`Plan`.
    :param shift: timestep shift of every stage grid (:func:`pyrflow_ref.windows.step_grid`).
    :param rng: a Generator, or a callable ``shape -> white noise`` (to feed identical noise to
        two implementations), for the high-band noise of each transition.
    :param callback: called as ``callback(stage, step, sigma, x)`` after every step.
    :param start: ``(stage, sigma)``: ``noise`` is instead a state of that stage at noise level ``sigma``
        (e.g. a few-step roll-out's :attr:`Prediction.x`), continued along :meth:`Plan.resumed`.
    """
    plan = Plan.build(schedule, pyramid, windows, shift)
    draw = _noise_fn(rng)
    x = np.asarray(noise, dtype=np.float64)
    for sp in plan.stages if start is None else plan.resumed(*start):
        i, grid = sp.stage, sp.grid
        g = stage_process(pyramid, plan, i, x.shape[-3]).frame_gain(x.shape[-3])
        for k in range(sp.steps):
            v = model_velocity(_stage_model(model, i), x, grid[k], g, cond)
            x = x + (grid[k + 1] - grid[k]) * v
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
        if i > 0 and pyramid is not None:
            transition = pyramid.transitions[i - 1]
            x = transition.up_noisy(x, sp.sigma_c, draw(transition.fine_shape(x.shape)))
    return x


# twin: pyrflow_fast.samplers.sample_plain
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


# twin: pyrflow_fast.samplers.Prediction
class Prediction(NamedTuple):
    """What :func:`sample_few_step` returns when stopped at an evaluation."""

    x0: np.ndarray
    """The evaluation's clean prediction of its stage, ``(B, C, F_i, H_i, W_i)``."""
    stage: int
    process: Any
    """The stage's :class:`pyrflow_ref.process.StageProcess` (effective windows of the schedule; plain without
    a pyramid; typed ``Any`` so the docs need not pick between the twins)."""
    x: np.ndarray
    """The state the model was evaluated at (fresh noise of the roll-out included), ``(B, C, F_i, H_i, W_i)``."""
    sigma: float
    """Its noise level."""


# twin: pyrflow_fast.samplers.sample_few_step
def sample_few_step(
    model: Models,
    noise: np.ndarray,
    pyramid: Pyramid | None,
    windows: StageWindows,
    schedule: str | Sequence[int] | Plan,
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
    stop: int | None = None,
) -> np.ndarray | Prediction:
    r"""Few-step x0-prediction sampling (distilled generators, e.g. ``"2-2-1"``), no CFG (theory §3.3).

    Stage ``i`` with ``n`` steps evaluates the model at the first ``n`` noise levels of its grid. Each
    evaluation decodes the clean stage signal (:meth:`StageProcess.x0_from_velocity`), then
    re-noises it with fresh noise (:meth:`StageProcess.sample`): to the next noise level of the stage
    with the stage's process, or across the boundary with the finer stage's process at its
    noisiest noise level and coarse signal :math:`\mathrm{up}(x_0)`, i.e. its
    :math:`y_n = (1 - \sigma) \mathrm{up}(x_0) + \sigma \epsilon` (without a pyramid: the plain
    :math:`(1 - \sigma) x_0 + \sigma \epsilon`). Returns the last clean prediction.

    :param stop: global index (from 0, coarsest stage first) of the evaluation to stop at: returns
        its :class:`Prediction` ``(x0, stage, process, x, sigma)`` instead; with the last index ``x0`` is
        the sampler's output. Other arguments as in :func:`sample_euler`.
    """
    plan = Plan.build(schedule, pyramid, windows, shift)
    if stop is not None:
        plan.locate(stop)  # validates the index before any evaluation
    draw = _noise_fn(rng)
    x = np.asarray(noise, dtype=np.float64)
    count = 0
    for sp in plan.stages:
        i, n, grid = sp.stage, sp.steps, sp.grid
        process = stage_process(pyramid, plan, i, x.shape[-3])
        for k in range(n):
            x0 = process.denoise(_stage_model(model, i), x, grid[k], cond)
            if count == stop:
                return Prediction(x0, i, process, x, float(grid[k]))
            count += 1
            if k + 1 < n:
                x = process.sample(x0, draw(x.shape), grid[k + 1])
            elif i > 0:  # the finer stage's process at the boundary, coarse signal up(x0)
                fine = pyramid.transitions[i - 1].fine_shape(x.shape) if pyramid is not None else x.shape
                up = pyramid.transitions[i - 1].up(x0, fine) if pyramid is not None else x0
                x = stage_process(pyramid, plan, i - 1, fine[-3]).sample(up, draw(fine), sp.sigma_c, coarse=up)
            else:
                x = x0
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
    return x
