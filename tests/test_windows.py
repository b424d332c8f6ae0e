"""Stage windows, schedule strings and step grids."""

import numpy as np
import pytest

from pyrflow_ref.natural import varsigma
from pyrflow_ref.windows import (
    WAN_DEFAULT_BOUNDARIES,
    StageWindows,
    format_schedule,
    parse_schedule,
    shift_sigma,
    step_grid,
    unshift_sigma,
)


def test_windows_are_continuous_and_cover_unit_interval():
    w = StageWindows(WAN_DEFAULT_BOUNDARIES)
    assert w.num_stages == 3
    assert w.sigma_c(0) == 0.0 and w.sigma_n(2) == 1.0
    for i in range(2):
        assert w.sigma_n(i) == w.sigma_c(i + 1)
    assert StageWindows((0.0, 5 / 9, 15 / 17, 1.0)) == w
    assert [w.stage_of(s) for s in (0.0, 0.3, 5 / 9, 0.6, 0.9, 1.0)] == [0, 0, 0, 1, 2, 2]


def test_default_boundaries_reproduce_wan_grid():
    """20-20-10 at shift 5 visits exactly Wan's 50-step shift-5 grid."""
    wan = shift_sigma(np.linspace(1, 0, 51), 5.0)
    w = StageWindows(WAN_DEFAULT_BOUNDARIES)
    grids = [step_grid(w.sigma_n(i), w.sigma_c(i), n, 5.0) for i, n in zip((2, 1, 0), (20, 20, 10))]
    ours = np.concatenate([grids[0], grids[1][1:], grids[2][1:]])
    np.testing.assert_allclose(ours, wan, atol=1e-14)
    assert w.sigma_n(1) == pytest.approx(0.882, abs=5e-4) and w.sigma_c(1) == pytest.approx(0.556, abs=5e-4)


def test_shift_is_varsigma_and_invertible():
    s = np.linspace(0, 1, 11)
    np.testing.assert_allclose(shift_sigma(s, 5.0), 5 * s / (1 + 4 * s), atol=1e-15)
    np.testing.assert_allclose(shift_sigma(s, 3.0), varsigma(s, 1 / 3), atol=1e-15)
    np.testing.assert_allclose(unshift_sigma(shift_sigma(s, 5.0), 5.0), s, atol=1e-15)


def test_step_grid_uniform_and_exact_ends():
    np.testing.assert_allclose(step_grid(1.0, 0.0, 4), [1.0, 0.75, 0.5, 0.25, 0.0])
    g = step_grid(0.9, 0.3, 7, shift=3.0)
    assert g[0] == 0.9 and g[-1] == 0.3 and np.all(np.diff(g) < 0)


def test_schedule_round_trip():
    for text in ("20-20-10", "0-0-50", "2-2-1", "7"):
        assert format_schedule(parse_schedule(text)) == text


def test_for_schedule_skips_coarsest_stages():
    w = StageWindows(WAN_DEFAULT_BOUNDARIES)
    assert w.for_schedule((20, 20, 10)) == w
    assert w.for_schedule((0, 0, 50)) == StageWindows(())
    assert w.for_schedule((0, 4, 2)) == StageWindows((5 / 9,))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: parse_schedule("20-20", num_stages=3), r"'20-20' has 2 stages, expected 3"),
        (lambda: parse_schedule("20-x-10"), r"'20-x-10' must be non-negative integers"),
        (lambda: parse_schedule("2.5-1-1"), r"must be non-negative integers"),
        (lambda: parse_schedule("-1-2-3"), r"must be non-negative integers"),
        (lambda: StageWindows((0.5, 0.4)), r"boundary 1 = 0.4 <= 0.5"),
        (lambda: StageWindows((0.5, 0.5)), r"strictly increasing"),
        (lambda: StageWindows((0.0, 0.5)), r"boundary 0 = 0.0 is not inside \(0, 1\)"),
        (lambda: StageWindows((1.2,)), r"boundary 0 = 1.2 is not inside"),
        (lambda: StageWindows((0.5,)).sigma_c(2), r"stage 2 out of range for 2 stages"),
        (lambda: StageWindows((0.5,)).for_schedule((1, 2, 3)), r"has 3 stages, expected 2"),
        (lambda: StageWindows((0.3, 0.6)).for_schedule((5, 0, 5)), r"skips a stage below one with steps"),
        (lambda: StageWindows((0.3, 0.6)).for_schedule((0, 0, 0)), r"0 steps in every stage"),
        (lambda: step_grid(1.0, 0.5, 0), r"n >= 1"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
