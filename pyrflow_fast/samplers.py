r"""Torch twin of :mod:`pyrflow_ref.samplers`: the same samplers over the same model contract.

The model is a :class:`~pyrflow_fast.contract.Denoiser`, ``model(x_nat, t, cond) -> v_hat`` with
``x_nat = x / c`` ``(B, C, F, H, W)`` and per-frame timesteps ``t = 1000 * varsigma`` ``(B, F)``
(a tensor on the sample's device, in ``promote_types(x.dtype, float32)``). Step grids and windows
are the reference's host-side floats. Samples keep the dtype of ``noise``; gains, timesteps and
the fused ops compute in at least float32.

Fast paths (Triton on CUDA, torch twins elsewhere, :mod:`pyrflow_fast.kernels`): every Euler
step is one fused guidance-combine + bridge + update (a :func:`guided` model is evaluated as its
two branches so the combine fuses too), and Haar transitions are one fused ``up_noisy`` pass. With
``rng`` a ``torch.Generator`` (or None) on the Triton path the transition noise is generated
in-kernel from a seed drawn from ``rng``, so it never touches memory; a callable ``rng`` always
supplies the noise tensor, which is how two implementations are fed identical noise.

Schedules, plans, ``pyramid=None`` (PPF) and per-stage models as in :mod:`pyrflow_ref.samplers`.
Stopped at an evaluation, the few-step sampler is the distillation roll-out:

>>> from pyrflow_ref.windows import StageWindows
>>> pyramid, windows = Pyramid.uniform("haar", (1, 2, 2), 2), StageWindows((0.5,))
>>> p = sample_few_step(lambda x, t, c: -x, torch.ones(1, 2, 1, 2, 2), pyramid, windows, "1-1", stop=0)
>>> p.stage, (p.process.sigma_c, p.process.sigma_n), tuple(p.x0.shape), p.sigma
(1, (0.5, 1.0), (1, 2, 1, 2, 2), 1.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from pyrflow_ref.plan import Plan
from pyrflow_ref.samplers import guidance_combine
from pyrflow_ref.windows import StageWindows

from . import kernels
from .contract import Denoiser
from .process import StageProcess, _gain, model_velocity, natural_input, timesteps
from .resample import Pyramid, Resampler

Callback = Callable[[int, int, float, torch.Tensor], None]
NoiseSource = torch.Generator | Callable[[tuple[int, ...]], torch.Tensor] | None
Models = Denoiser | Sequence[Denoiser]
"""One model, or one per stage (finest first)."""

__all__ = [
    "Guided",
    "Prediction",
    "guidance_combine",
    "guided",
    "model_velocity",
    "sample_euler",
    "sample_few_step",
    "sample_plain",
    "timesteps",
]


@dataclass(frozen=True)
class Guided:
    r"""A classifier-free-guided model (from :func:`guided`), itself a :class:`~pyrflow_fast.contract.Denoiser`."""

    model: Denoiser
    scale: float
    uncond: Any = None
    # the last (cond, torch.cat([cond, uncond])): one batched condition tensor per cond, so a
    # model's text cache (WanDiT.text_cache) sees the same tensor at every step
    _pair: list = field(default_factory=list, init=False, repr=False, compare=False)

    def branches(self, x_nat: torch.Tensor, t: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_cond, v_uncond)``, ``(B, C, F, H, W)`` each, from one forward of batch ``2B`` when
        ``cond`` and ``uncond`` are batched tensors of one shape, dtype and device (else two forwards)."""
        u = self.uncond
        if not (
            isinstance(cond, torch.Tensor)
            and isinstance(u, torch.Tensor)
            and cond.ndim > 0
            and (cond.shape, cond.dtype, cond.device) == (u.shape, u.dtype, u.device)
        ):
            return self.model(x_nat, t, cond), self.model(x_nat, t, u)
        if not self._pair or self._pair[0] is not cond:
            self._pair[:] = [cond, torch.cat([cond, u])]
        v = self.model(torch.cat([x_nat, x_nat]), torch.cat([t, t]), self._pair[1])
        return v[: x_nat.shape[0]], v[x_nat.shape[0] :]

    def __call__(self, x_nat: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        v_c, v_u = self.branches(x_nat, t, cond)
        return guidance_combine(v_u, v_c, self.scale)


# twin: pyrflow_ref.samplers.guided
def guided(model: Denoiser, scale: float, uncond: Any = None) -> Guided:
    r"""Classifier-free guidance :math:`\hat v_u + w(\hat v_c - \hat v_u)` on the natural velocity.

    The bridge is affine in :math:`\hat v` with a condition-free offset, so guiding :math:`\hat v`
    guides :math:`dx/d\sigma` identically; the samplers fuse the combine into the Euler update. The
    two branches run as one forward of twice the batch when ``cond`` and ``uncond`` are tensors of
    one shape (:meth:`Guided.branches`); the model must treat batch entries independently.
    """
    return Guided(model, scale, uncond)


# twin: pyrflow_ref.samplers._stage_model
def _stage_model(model: Models, stage: int) -> Denoiser:
    """The model of ``stage``: ``model`` itself, or its ``stage``-th entry when one is given per stage."""
    return model[stage] if isinstance(model, Sequence) else model


# twin: pyrflow_ref.samplers.stage_process
def stage_process(pyramid: Pyramid | None, plan: Plan, stage: int, frames: int) -> StageProcess:
    """The process a sampler runs ``stage`` with: pyramidal on the plan's effective windows, plain without a pyramid."""
    if pyramid is None:
        return StageProcess.plain()
    return StageProcess.pyramidal(pyramid, plan.effective_windows, stage, frames)


def _euler_step(
    model: Denoiser, x: torch.Tensor, sigma: float, dsigma: float, g: torch.Tensor, cond: Any
) -> torch.Tensor:
    """``x + dsigma * dx/dsigma`` through the fused guidance + Euler op."""
    x_nat, t = natural_input(x, sigma, g)
    if isinstance(model, Guided):
        v_c, v_u = model.branches(x_nat, t, cond)
        return kernels.guided_euler(x, v_c, v_u, sigma, dsigma, g, model.scale)
    return kernels.guided_euler(x, model(x_nat, t, cond), None, sigma, dsigma, g)


def _draw(rng: NoiseSource, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """White noise of ``shape`` on ``like``'s device and dtype."""
    if callable(rng):
        return torch.as_tensor(rng(tuple(shape))).to(like)
    return torch.randn(shape, generator=rng, dtype=like.dtype, device=like.device)


def _transition(transition: Resampler, x: torch.Tensor, s: float, rng: NoiseSource) -> torch.Tensor:
    """``up_noisy`` to the finer stage; in-kernel noise on the Triton path of a Haar transition."""
    if transition.fused and not callable(rng) and kernels.use_triton(x):
        seed = int(torch.randint(2**31 - 1, (), generator=rng, device=rng.device if rng is not None else "cpu"))
        return kernels.haar_up_noisy(x, s, None, transition.factors, transition.first_frame, seed=seed)
    return transition.up_noisy(x, s, _draw(rng, transition.fine_shape(tuple(x.shape)), x))


# twin: pyrflow_ref.samplers.sample_euler
def sample_euler(
    model: Models,
    noise: torch.Tensor,
    pyramid: Pyramid | None,
    windows: StageWindows,
    schedule: str | Sequence[int] | Plan,
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
    start: tuple[int, float] | None = None,
) -> torch.Tensor:
    """Pyramidal Euler sampling from pure noise to a stage-0 sample; see :func:`pyrflow_ref.samplers.sample_euler`.

    :param rng: a ``torch.Generator`` (on the sample's device), or a callable ``shape -> white
        noise`` (to feed identical noise to two implementations), for the high-band noise of each
        transition.
    """
    plan = Plan.build(schedule, pyramid, windows, shift)
    x = torch.as_tensor(noise)
    for sp in plan.stages if start is None else plan.resumed(*start):
        i, grid = sp.stage, sp.grid
        g = _gain(stage_process(pyramid, plan, i, x.shape[-3]).frame_gain(x.shape[-3]), x)
        for k in range(sp.steps):
            x = _euler_step(_stage_model(model, i), x, float(grid[k]), float(grid[k + 1] - grid[k]), g, cond)
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
        if i > 0 and pyramid is not None:
            x = _transition(pyramid.transitions[i - 1], x, sp.sigma_c, rng)
    return x


# twin: pyrflow_ref.samplers.sample_plain
def sample_plain(
    model: Denoiser,
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


# twin: pyrflow_ref.samplers.Prediction
class Prediction(NamedTuple):
    """What :func:`sample_few_step` returns when stopped (see :class:`pyrflow_ref.samplers.Prediction`)."""

    x0: torch.Tensor
    stage: int
    process: Any  # a pyrflow_fast.process.StageProcess (see the reference's field)
    x: torch.Tensor
    sigma: float


# twin: pyrflow_ref.samplers.sample_few_step
def sample_few_step(
    model: Models,
    noise: torch.Tensor,
    pyramid: Pyramid | None,
    windows: StageWindows,
    schedule: str | Sequence[int] | Plan,
    *,
    cond: Any = None,
    shift: float = 1.0,
    rng: NoiseSource = None,
    callback: Callback | None = None,
    stop: int | None = None,
) -> torch.Tensor | Prediction:
    """Few-step x0-prediction sampling (distilled generators, e.g. ``"2-2-1"``), no CFG.

    See :func:`pyrflow_ref.samplers.sample_few_step`; ``rng`` as in :func:`sample_euler`. Samples
    keep the dtype of ``noise``. With ``stop`` (backward simulation, e.g. DMD's generator
    roll-out) the evaluations before ``stop`` and their re-noising run under ``torch.no_grad``
    and evaluation ``stop`` in the caller's grad mode, so only it carries a gradient; its ``x0``
    is in the velocity's dtype (at least float32).
    """
    plan = Plan.build(schedule, pyramid, windows, shift)
    if stop is not None:
        plan.locate(stop)  # validates the index before any evaluation
    x = torch.as_tensor(noise)
    noise_dtype = x.dtype
    count = 0
    for sp in plan.stages:
        i, n, grid = sp.stage, sp.steps, sp.grid
        process = stage_process(pyramid, plan, i, x.shape[-3])
        for k in range(n):
            last = count == stop
            with torch.no_grad() if stop is not None and not last else contextlib.nullcontext():
                x0 = process.denoise(_stage_model(model, i), x, float(grid[k]), cond)
                if last:
                    return Prediction(x0, i, process, x, float(grid[k]))
                count += 1
                if k + 1 < n:
                    x = process.sample(x0, _draw(rng, tuple(x.shape), x), float(grid[k + 1]))
                elif i > 0:  # the finer stage's process at the boundary, coarse signal up(x0)
                    fine = (
                        pyramid.transitions[i - 1].fine_shape(tuple(x.shape)) if pyramid is not None else tuple(x.shape)
                    )
                    up = pyramid.transitions[i - 1].up(x0, fine) if pyramid is not None else x0
                    finer = stage_process(pyramid, plan, i - 1, fine[-3])
                    x = finer.sample(up, _draw(rng, fine, x), sp.sigma_c, coarse=up)
                else:
                    x = x0
                x = x.to(noise_dtype)  # the velocity is computed in at least float32
            if callback is not None:
                callback(i, k, float(grid[k + 1]), x)
    return x
