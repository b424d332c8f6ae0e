r"""A sampling plan: a schedule resolved against a pyramid's stage windows, once (theory §3.3).

A schedule lists steps per stage **coarsest first** (``"20-20-10"``); stages are numbered finest
first (stage 0 is the output resolution). :class:`Plan` does the one flip between the two
orders, drops the coarsest stages that take no steps (their windows join the next finer stage,
:meth:`~pyrflow_ref.windows.StageWindows.for_schedule`) and builds each stage's step grid

.. math::

    \sigma_n^{(i)} = s_0 > s_1 > \dots > s_{n_i} = \sigma_c^{(i)}

(:func:`~pyrflow_ref.windows.step_grid`, uniform before the timestep shift). Samplers walk
:attr:`Plan.stages`; model evaluations are numbered globally from 0 in that order.

>>> from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows
>>> plan = Plan.build("0-2-1", None, StageWindows(WAN_DEFAULT_BOUNDARIES))
>>> plan.total_steps, plan.top, [(s.stage, s.steps) for s in plan.stages]
(3, 1, [(1, 2), (0, 1)])
>>> plan.locate(2), plan.effective_windows.num_stages
((0, 0), 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .windows import StageWindows, parse_schedule, step_grid

__all__ = ["Plan", "StagePlan"]


class StagePlan(NamedTuple):
    """One stage of a :class:`Plan`: its index (finest first), step count, grid and window."""

    stage: int
    steps: int
    grid: np.ndarray
    """``steps + 1`` global levels from ``sigma_n`` down to ``sigma_c`` (float64)."""
    sigma_c: float
    sigma_n: float


@dataclass(frozen=True)
class Plan:
    """Steps per stage, effective windows and step grids of a schedule (see the module docstring).

    :param steps: steps per stage, coarsest first (a string such as ``"2-2-1"`` is parsed).
    :param windows: the stage windows (one per stage of the pyramid).
    :param shift: timestep shift of every stage grid.
    """

    steps: tuple[int, ...]
    windows: StageWindows
    shift: float = 1.0
    effective_windows: StageWindows = field(init=False, compare=False)
    stages: tuple[StagePlan, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = self.steps
        if isinstance(steps, str):
            steps = parse_schedule(steps, self.windows.num_stages)
        steps = tuple(int(n) for n in steps)
        eff = self.windows.for_schedule(steps)
        # the one place the coarsest-first schedule meets the finest-first stage index
        stages = tuple(
            StagePlan(
                i,
                steps[self.windows.num_stages - 1 - i],
                step_grid(eff.sigma_n(i), eff.sigma_c(i), steps[self.windows.num_stages - 1 - i], self.shift),
                eff.sigma_c(i),
                eff.sigma_n(i),
            )
            for i in range(eff.num_stages - 1, -1, -1)
        )
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "shift", float(self.shift))
        object.__setattr__(self, "effective_windows", eff)
        object.__setattr__(self, "stages", stages)

    @classmethod
    def build(
        cls, schedule: str | Sequence[int] | Plan, pyramid: Any, windows: StageWindows, shift: float = 1.0
    ) -> Plan:
        """The plan of ``schedule`` on ``pyramid`` (``None``: no resampling, e.g. PPF stages) and ``windows``.

        A :class:`Plan` passes through after checking it was made for ``windows`` and ``shift``.
        """
        if pyramid is not None and pyramid.num_stages != windows.num_stages:
            raise ValueError(f"pyramid has {pyramid.num_stages} stages but the windows have {windows.num_stages}")
        if isinstance(schedule, Plan):
            if schedule.windows != windows or schedule.shift != float(shift):
                raise ValueError(
                    f"plan for {schedule.windows} at shift {schedule.shift} used with {windows} at shift {float(shift)}"
                )
            return schedule
        return cls(schedule, windows, shift)

    @property
    def num_stages(self) -> int:
        """Stages of the pyramid (skipped coarse stages included)."""
        return self.windows.num_stages

    @property
    def top(self) -> int:
        """The coarsest stage with steps: the sampler's starting noise has its shape."""
        return self.effective_windows.num_stages - 1

    @property
    def total_steps(self) -> int:
        """Model evaluations of the schedule."""
        return sum(self.steps)

    def steps_of(self, stage: int) -> int:
        """Steps of ``stage`` (finest first; 0 for a skipped coarse stage)."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} out of range for {self.num_stages} stages")
        return self.steps[self.num_stages - 1 - stage]

    def resumed(self, stage: int, sigma: float) -> tuple[StagePlan, ...]:
        """The stages a sampler walks from a state of ``stage`` at noise level ``sigma``: that stage from
        ``sigma`` down its grid (the levels below ``sigma``), then the finer stages whole.

        >>> from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES
        >>> [(sp.stage, sp.steps) for sp in Plan("4-4-2", StageWindows(WAN_DEFAULT_BOUNDARIES)).resumed(1, 0.7)]
        [(1, 2), (0, 2)]
        """
        out = [sp for sp in self.stages if sp.stage < stage]
        here = [sp for sp in self.stages if sp.stage == stage]
        if not here or not here[0].sigma_c <= sigma <= here[0].sigma_n:
            window = f"[{here[0].sigma_c:g}, {here[0].sigma_n:g}]" if here else "none: the stage takes no steps"
            raise ValueError(f"cannot resume stage {stage} at sigma {sigma:g}: its window is {window}")
        sp = here[0]
        grid = np.concatenate(([float(sigma)], sp.grid[sp.grid < sigma]))
        return (sp._replace(steps=len(grid) - 1, grid=grid), *out)

    def locate(self, index: int) -> tuple[int, int]:
        """``(stage, step)`` of global evaluation ``index`` (from 0, coarsest stage first)."""
        if not 0 <= index < self.total_steps:
            raise ValueError(f"stop {index} outside the {self.total_steps} evaluations of schedule {self.steps}")
        starts = np.cumsum([0, *(sp.steps for sp in self.stages)])
        n = int(np.searchsorted(starts, index, side="right")) - 1
        return self.stages[n].stage, index - int(starts[n])
