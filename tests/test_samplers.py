"""Samplers: S = 1 is Wan's plain sampler, schedules, CFG, few-step sampling of a point mass."""

import re

import numpy as np
import pytest

from pyrflow_ref.gaussian import GaussianVideoModel, power_law_covariance
from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import TRANSITION_FAMILIES, Pyramid
from pyrflow_ref.samplers import guided, model_velocity, sample_euler, sample_few_step, sample_plain, timesteps
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows, shift_sigma

SHAPE = (1, 5, 4, 4)
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)


def toy_model(x_nat, t, cond):
    """A nonlinear natural-velocity model (only the contract matters here)."""
    scale = 1.0 if cond is None else float(cond)
    return scale * np.tanh(x_nat) * (t[:, None, :, None, None] / 1000.0) - 0.1 * x_nat


def test_plain_sampler_is_wan_euler():
    """S = 1: x <- x + (s_{k+1} - s_k) model(x, 1000 s_k) on Wan's shifted grid."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, *SHAPE))
    ours = sample_plain(toy_model, noise, 12, shift=5.0)
    grid = shift_sigma(np.linspace(1, 0, 13), 5.0)
    x = noise.copy()
    for k in range(12):
        t = np.full((2, SHAPE[1]), 1000.0 * grid[k])
        x = x + (grid[k + 1] - grid[k]) * toy_model(x, t, None)
    np.testing.assert_allclose(ours, x, rtol=1e-13, atol=1e-13)


def test_zero_step_coarse_stages_are_plain_sampling():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((1, *SHAPE))
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    np.testing.assert_array_equal(
        sample_euler(toy_model, noise, pyramid, WINDOWS, "0-0-7", shift=3.0),
        sample_plain(toy_model, noise, 7, shift=3.0),
    )


def test_model_sees_natural_scale_and_per_frame_timesteps():
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    seen = []

    def spy(x_nat, t, cond):
        seen.append((x_nat.shape, t.copy()))
        return np.zeros_like(x_nat)

    sample_euler(spy, np.zeros((1, 1, 2, 1, 1)), pyramid, WINDOWS, "1-1-1", rng=np.random.default_rng(0))
    shapes = [s for s, _ in seen]
    assert shapes == [(1, 1, 2, 1, 1), (1, 1, 3, 2, 2), (1, 1, 5, 4, 4)]
    t_coarse = seen[0][1][0]
    assert t_coarse[0] == pytest.approx(1000.0) and t_coarse[1] == pytest.approx(1000.0)  # sigma = 1: pure noise
    t_mid = seen[1][1][0]  # sigma = 15/17, gains 2 (frame 0) and 2 sqrt 2
    s = 15 / 17
    np.testing.assert_allclose(t_mid, 1000 * s / (s + np.array([2, 2 * np.sqrt(2), 2 * np.sqrt(2)]) * (1 - s)))
    np.testing.assert_allclose(timesteps(0.5, np.ones(3), 2), 500.0)


def test_guided_combines_natural_velocities():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, *SHAPE))
    t = np.full((2, SHAPE[1]), 400.0)
    guided_model = guided(toy_model, 5.0, uncond=None)
    u, c = toy_model(x, t, None), toy_model(x, t, 2.0)
    np.testing.assert_allclose(guided_model(x, t, 2.0), u + 5.0 * (c - u), atol=1e-15)
    np.testing.assert_allclose(guided(toy_model, 1.0)(x, t, 2.0), c, atol=1e-15)
    g = np.ones(SHAPE[1])
    # guidance on v_hat is guidance on dx/dsigma (the bridge is affine with a condition-free offset)
    vu, vc = (model_velocity(toy_model, x, 0.4, g, cond) for cond in (None, 2.0))
    np.testing.assert_allclose(model_velocity(guided_model, x, 0.4, g, 2.0), vu + 5.0 * (vc - vu), atol=1e-13)


@pytest.mark.parametrize("family", TRANSITION_FAMILIES)
@pytest.mark.parametrize("schedule", ["2-2-1", "1-1-1", "0-0-2", "0-1-1", "3-2-2"])
def test_few_step_sampler_is_exact_for_a_point_mass(family, schedule):
    """With the exact velocity of a point-mass data set, every few-step schedule returns the point."""
    rng = np.random.default_rng(3)
    pyramid = Pyramid.uniform(family, (2, 2, 2), 3)
    point = rng.standard_normal(SHAPE)
    steps = tuple(int(n) for n in schedule.split("-"))
    eff = WINDOWS.for_schedule(steps)
    sub = Pyramid(pyramid.transitions[: eff.num_stages - 1])
    model = GaussianVideoModel.latent(np.zeros((80, 80)), SHAPE, sub, eff, mean=point)
    noise = rng.standard_normal((3, *model.shapes[-1]))
    out = sample_few_step(model, noise, sub, eff, steps[3 - eff.num_stages :], rng=rng)
    np.testing.assert_allclose(out, np.broadcast_to(point, out.shape), atol=1e-10)


def test_euler_converges_to_a_point_mass():
    rng = np.random.default_rng(4)
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    point = rng.standard_normal(SHAPE)
    model = GaussianVideoModel.latent(np.zeros((80, 80)), SHAPE, pyramid, WINDOWS, mean=point)
    out = sample_euler(
        model, rng.standard_normal((2, *model.shapes[-1])), pyramid, WINDOWS, "20-20-10", shift=5.0, rng=rng
    )
    np.testing.assert_allclose(out, np.broadcast_to(point, out.shape), atol=1e-10)


def test_same_seed_same_sample_and_callback():
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    model = GaussianVideoModel.latent(power_law_covariance(SHAPE), SHAPE, pyramid, WINDOWS)
    calls = []

    def run(seed):
        rng = np.random.default_rng(seed)
        return sample_euler(
            model,
            rng.standard_normal((1, *model.shapes[-1])),
            pyramid,
            WINDOWS,
            "2-2-1",
            rng=rng,
            callback=lambda *a: calls.append(a[:3]),
        )

    np.testing.assert_array_equal(run(7), run(7))
    assert [c[:2] for c in calls[:5]] == [(2, 0), (2, 1), (1, 0), (1, 1), (0, 0)]
    assert calls[4][2] == 0.0


def test_bad_input():
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    with pytest.raises(ValueError, match="has 2 stages, expected 3"):
        sample_euler(toy_model, np.zeros((1, *SHAPE)), pyramid, WINDOWS, "2-2")
    with pytest.raises(ValueError, match="pyramid has 2 stages but the windows have 3"):
        sample_euler(toy_model, np.zeros((1, *SHAPE)), Pyramid.uniform("haar", (2, 2, 2), 2), WINDOWS, "2-2-2")


def test_few_step_stops_at_each_evaluation():
    """``stop=k`` returns evaluation k's clean prediction of the state the full run reaches there."""
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    model = GaussianVideoModel.latent(power_law_covariance(SHAPE), SHAPE, pyramid, WINDOWS)
    noise = np.random.default_rng(5).standard_normal((2, *model.shapes[-1]))
    states = [noise]
    out = sample_few_step(
        model, noise, pyramid, WINDOWS, "2-2-1", shift=3.0, rng=np.random.default_rng(6),
        callback=lambda i, k, s, x: states.append(x),
    )  # fmt: skip
    plan = Plan.build("2-2-1", pyramid, WINDOWS, 3.0)
    sigmas = [float(s) for sp in plan.stages for s in sp.grid[:-1]]
    stages = []
    for k in range(5):
        x0, stage, process, x, sigma = sample_few_step(
            model, noise, pyramid, WINDOWS, plan, shift=3.0, rng=np.random.default_rng(6), stop=k
        )
        stages.append(stage)
        assert sigma == sigmas[k]
        np.testing.assert_array_equal(x, states[k])
        assert (process.sigma_c, process.sigma_n) == (WINDOWS.sigma_c(stage), WINDOWS.sigma_n(stage))
        np.testing.assert_array_equal(x0, process.denoise(model, states[k], sigmas[k]))
    assert stages == [2, 2, 1, 1, 0]
    np.testing.assert_array_equal(x0, out)
    with pytest.raises(ValueError, match="stop 5 outside the 5 evaluations"):
        sample_few_step(model, noise, pyramid, WINDOWS, "2-2-1", stop=5)


def test_euler_resumes_from_any_state_of_its_run():
    """``start=(stage, sigma)`` from the state a full run reaches at ``sigma`` finishes that run exactly."""
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    noise = np.random.default_rng(3).standard_normal((2, 1, *pyramid.shapes(SHAPE)[-1][-3:]))
    draws = []

    def record(shape):
        draws.append(np.random.default_rng(len(draws)).standard_normal(shape))
        return draws[-1]

    states = []
    out = sample_euler(
        toy_model, noise, pyramid, WINDOWS, "3-3-2", cond=2.0, shift=3.0, rng=record,
        callback=lambda i, k, s, x: states.append((i, s, x)),
    )  # fmt: skip
    for n, (i, sigma, x) in enumerate(states[:-1]):
        rest = iter(draws[2 - i :])  # the transitions after stage i
        got = sample_euler(
            toy_model, x, pyramid, WINDOWS, "3-3-2", cond=2.0, shift=3.0, rng=lambda shape, rest=rest: next(rest),
            start=(i, sigma),
        )  # fmt: skip
        np.testing.assert_allclose(got, out, rtol=0, atol=1e-12, err_msg=f"resumed after step {n}")
    with pytest.raises(ValueError, match=re.escape("cannot resume stage 1 at sigma 0.9: its window is [")):
        sample_euler(toy_model, noise, pyramid, WINDOWS, "3-3-2", start=(1, 0.9))
    with pytest.raises(ValueError, match="cannot resume stage 2 at sigma 0.9: its window is none"):
        sample_euler(toy_model, noise, pyramid, WINDOWS, "0-3-2", start=(2, 0.9))


def test_samplers_accept_a_plan():
    pyramid = Pyramid.uniform("dct", (2, 2, 2), 3)
    model = GaussianVideoModel.latent(power_law_covariance(SHAPE), SHAPE, pyramid, WINDOWS)
    noise = np.random.default_rng(8).standard_normal((1, *model.shapes[-2]))
    plan = Plan.build("0-2-3", pyramid, WINDOWS, 2.0)
    for sampler in (sample_euler, sample_few_step):
        want = sampler(model, noise, pyramid, WINDOWS, "0-2-3", shift=2.0, rng=np.random.default_rng(1))
        got = sampler(model, noise, pyramid, WINDOWS, plan, shift=2.0, rng=np.random.default_rng(1))
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="at shift 2.0 used with"):
        sample_euler(model, noise, pyramid, WINDOWS, plan)


def test_without_a_pyramid_stages_share_the_resolution():
    """``pyramid=None``: one model per stage, the plain process, no resampling (PPF)."""
    x = np.random.default_rng(9).standard_normal((2, *SHAPE))
    models = [lambda xn, t, c, a=a: a * xn - 0.1 for a in (0.5, 0.7, 0.9)]
    plan = Plan.build("1-2-1", None, WINDOWS, 2.0)
    grid = [float(s) for sp in plan.stages for s in sp.grid[:-1]] + [0.0]
    stage = [sp.stage for sp in plan.stages for _ in range(sp.steps)]
    draws = np.random.default_rng(3).standard_normal((4, 2, *SHAPE))
    euler, few = x, x
    for n, (s, s_next) in enumerate(zip(grid, grid[1:])):
        t = np.full((2, SHAPE[1]), 1000.0 * s)
        euler = euler + (s_next - s) * models[stage[n]](euler, t, None)
        x0 = few - s * models[stage[n]](few, t, None)
        few = (1 - s_next) * x0 + s_next * draws[n] if s_next > 0 else x0
    np.testing.assert_allclose(sample_euler(models, x, None, WINDOWS, plan, shift=2.0), euler, rtol=0, atol=1e-12)
    noise = iter(draws)
    got = sample_few_step(models, x, None, WINDOWS, plan, shift=2.0, rng=lambda shape: next(noise))
    np.testing.assert_allclose(got, few, rtol=0, atol=1e-12)
