"""Sampling plans (pyrflow_ref.plan): one flip from coarsest-first schedules to finest-first stages."""

import numpy as np
import pytest

from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import Pyramid
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows, step_grid

WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)
PYRAMID = Pyramid.uniform("haar", (2, 2, 2), 3)


def test_stages_coarsest_first_with_their_grids():
    plan = Plan.build("3-2-1", PYRAMID, WINDOWS, shift=5.0)
    assert plan.steps == (3, 2, 1) and plan.total_steps == 6 and plan.top == 2 and plan.num_stages == 3
    assert [(sp.stage, sp.steps) for sp in plan.stages] == [(2, 3), (1, 2), (0, 1)]
    assert [plan.steps_of(i) for i in range(3)] == [1, 2, 3]
    for sp in plan.stages:
        assert (sp.sigma_c, sp.sigma_n) == (WINDOWS.sigma_c(sp.stage), WINDOWS.sigma_n(sp.stage))
        np.testing.assert_array_equal(sp.grid, step_grid(sp.sigma_n, sp.sigma_c, sp.steps, 5.0))
    assert [plan.locate(k) for k in range(6)] == [(2, 0), (2, 1), (2, 2), (1, 0), (1, 1), (0, 0)]
    assert plan.effective_windows == WINDOWS
    assert plan == Plan((3, 2, 1), WINDOWS, 5) and plan != Plan("3-2-1", WINDOWS)


def test_skipped_coarse_stages_join_the_next_finer_one():
    plan = Plan((0, 0, 4), WINDOWS)
    assert plan.top == 0 and plan.effective_windows == StageWindows(())
    (only,) = plan.stages
    assert (only.stage, only.steps, only.sigma_c, only.sigma_n) == (0, 4, 0.0, 1.0)
    assert plan.steps_of(2) == 0


def test_build_checks_and_passes_plans_through():
    plan = Plan.build("1-1-1", PYRAMID, WINDOWS, 2.0)
    assert Plan.build(plan, PYRAMID, WINDOWS, 2.0) is plan
    assert Plan.build(plan, None, WINDOWS, 2.0) is plan
    with pytest.raises(ValueError, match="at shift 2.0 used with"):
        Plan.build(plan, PYRAMID, WINDOWS, 1.0)
    with pytest.raises(ValueError, match="used with"):
        Plan.build(plan, PYRAMID.__class__(PYRAMID.transitions[:1]), StageWindows((0.5,)), 2.0)
    with pytest.raises(ValueError, match="pyramid has 2 stages but the windows have 3"):
        Plan.build("1-1-1", Pyramid.uniform("haar", (2, 2, 2), 2), WINDOWS)
    with pytest.raises(ValueError, match="skips a stage"):
        Plan("1-0-1", WINDOWS)
    with pytest.raises(ValueError, match="stop 3 outside the 3 evaluations"):
        plan.locate(3)
    with pytest.raises(ValueError, match="stop -1 outside"):
        plan.locate(-1)
    with pytest.raises(ValueError, match="stage 3 out of range"):
        plan.steps_of(3)
