r"""Wan's own solvers on a plain schedule: diffusers' schedulers driven over pyrflow's model contract.

Wan2.1 and diffusers' ``WanPipeline`` sample with ``UniPCMultistepScheduler`` (flow prediction,
flow sigmas, order 2, ``bh2``); ``FlowMatchEulerDiscreteScheduler`` is diffusers' flow-matching
Euler. :func:`sample_scheduler` runs either exactly as ``WanPipeline`` does: ``set_timesteps(n)``,
then for each timestep ``t`` one guided velocity ``v`` and ``x = scheduler.step(v, t, x)``, so the
sigma grid and the integrator are diffusers' own. The model is a
:class:`~pyrflow_fast.contract.Denoiser` at a plain (single-stage) schedule, where the frame gain
is 1 and the natural-scale input is ``x`` itself; it gets the scheduler's timestep ``t``
(``1000 * sigma``, integer for UniPC as in diffusers) for every frame.

Only plain schedules (``0-0-N``: every step at the finest stage) can use these solvers: a
pyramidal stage restarts at a transition, which a multistep solver's history does not cover.

:data:`WAN_SCHEDULER_CONFIG` is the scheduler config of diffusers' Wan2.1 text-to-video folders
(``scheduler/scheduler_config.json``, ``flow_shift`` 3.0); :func:`make_scheduler` builds a scheduler
from a folder's config (:func:`~pyrflow_fast.pipeline.geometry.read_scheduler_config`) or from it.

>>> sched = make_scheduler("unipc", None, shift=None)
>>> sched.set_timesteps(4)
>>> sched.timesteps.tolist()
[999, 900, 750, 500]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .contract import Denoiser

__all__ = ["SCHEDULERS", "WAN_SCHEDULER_CONFIG", "make_scheduler", "sample_scheduler", "scheduler_solver"]

SCHEDULERS = {"unipc": "UniPCMultistepScheduler", "euler": "FlowMatchEulerDiscreteScheduler"}
"""Solver name -> the diffusers scheduler class it drives."""

WAN_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "UniPCMultistepScheduler",
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}
"""diffusers' Wan2.1 text-to-video scheduler (keys that differ from ``UniPCMultistepScheduler``'s defaults
included); Wan's own ``generate.py`` uses shift 5.0 at 720p."""

_SHIFT_KEY = {"unipc": "flow_shift", "euler": "shift"}


def scheduler_solver(config: dict[str, Any] | None) -> str:
    """The solver name (``unipc`` or ``euler``) of a scheduler config (``None``: Wan's, ``unipc``).

    :raises ValueError: for a scheduler class pyrflow does not drive, naming the ones it does.
    """
    name = (config or WAN_SCHEDULER_CONFIG).get("_class_name")
    for solver, cls in SCHEDULERS.items():
        if name == cls:
            return solver
    raise ValueError(
        f"scheduler {name!r} is not supported; scheduler/scheduler_config.json must name one of "
        f"{sorted(SCHEDULERS.values())} (or pass --solver unipc|euler)"
    )


def make_scheduler(solver: str, config: dict[str, Any] | None, shift: float | None) -> Any:
    """A fresh diffusers scheduler for ``solver`` (``unipc`` or ``euler``) from ``config``.

    :param config: a diffusers scheduler config (a folder's ``scheduler_config.json``); ``None``:
        :data:`WAN_SCHEDULER_CONFIG`. A config of the other class is converted (its shift carried over).
    :param shift: the timestep shift; ``None`` keeps the config's (``flow_shift`` / ``shift``).
    :raises ValueError: for an unknown solver or a UniPC config that is not flow matching.
    """
    import diffusers

    if solver not in SCHEDULERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SCHEDULERS)}")
    config = dict(WAN_SCHEDULER_CONFIG if config is None else config)
    source = scheduler_solver(config)
    if shift is None:
        shift = float(config.get(_SHIFT_KEY[source], 1.0))
    if solver == "unipc" and source == "unipc":
        if config.get("prediction_type") != "flow_prediction" or not config.get("use_flow_sigmas"):
            raise ValueError(
                "the UniPC scheduler config must set prediction_type='flow_prediction' and use_flow_sigmas=true "
                f"(a flow-matching model), got {config.get('prediction_type')!r} / {config.get('use_flow_sigmas')!r}"
            )
    if source != solver:  # keep only what both classes share: the training timesteps and the shift
        config = {"num_train_timesteps": config.get("num_train_timesteps", 1000)}
        if solver == "unipc":
            config.update({k: v for k, v in WAN_SCHEDULER_CONFIG.items() if k != "_class_name"})
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config[_SHIFT_KEY[solver]] = float(shift)
    return getattr(diffusers, SCHEDULERS[solver]).from_config(config)


def sample_scheduler(
    model: Denoiser,
    noise: torch.Tensor,
    scheduler: Any,
    steps: int,
    *,
    cond: Any = None,
    callback: Callable[[int, int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` ``(B, C, F, H, W)`` (float32) to a sample with ``scheduler`` in ``steps`` steps.

    The loop of diffusers' ``WanPipeline``: ``set_timesteps(steps)``, ``set_begin_index(0)``, and per
    timestep ``x = scheduler.step(model(x, t, cond), t, x)``. ``callback(0, k, sigma_next, x)`` after
    each step (stage 0, as the pyramidal samplers report the finest stage).
    """
    if steps < 1:
        raise ValueError(f"a solver needs at least one step, got {steps}")
    x = torch.as_tensor(noise)
    scheduler.set_timesteps(steps, device=x.device)
    scheduler.set_begin_index(0)
    b, f = x.shape[0], x.shape[2]
    for k, t in enumerate(scheduler.timesteps):
        v = model(x, t.to(torch.float32).expand(b, f), cond)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if callback is not None:
            callback(0, k, float(scheduler.sigmas[k + 1]), x)
    return x
