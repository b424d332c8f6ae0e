"""The one few-step sampler reproduces the distillation loop's former roll-outs, stop by stop.

Fixtures: tests/golden/make_rollout_golden.py (``rollout``, ``ppf_rollout`` and ``sample_ppf`` of
commit 9f518a0). Every stop agrees to 1e-6 relative (measured: 1.5e-7; half of the pyramid stops
bit-exact), not bit for bit, because the two former loops rounded the timestep differently: the
pyramid roll-out computed ``1000 * varsigma`` in float32, the PPF loops ``1000 * s`` in float64
rounded once. The one sampler rounds once from float64 for both
(:func:`pyrflow_fast.process.timesteps`, as the trainer's loss does); re-noising then differs in
the last bit of ``1 - s``.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from pyrflow_fast.ppf import ppf_stages, sample_ppf
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.samplers import sample_few_step
from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import StageWindows

HERE = pathlib.Path(__file__).parents[1] / "golden"
spec = importlib.util.spec_from_file_location("make_rollout_golden", HERE / "make_rollout_golden.py")
mk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mk)

GOLDEN = dict(np.load(mk.PATH))
WINDOWS = StageWindows(mk.BOUNDARIES)
STOPS = [(s, k) for s in mk.SCHEDULES for k in range(sum(mk.steps_of(s)))]


def close_rel(got: torch.Tensor, want: np.ndarray, rel: float = 1e-6) -> None:
    err = np.abs(got.detach().double().numpy() - want).max()
    assert got.shape == want.shape and err <= rel * max(np.abs(want).max(), 1.0), f"max abs error {err:.3g}"


@pytest.mark.parametrize("family", mk.FAMILIES)
@pytest.mark.parametrize(("schedule", "stop"), STOPS)
def test_pyramid_rollout(family, schedule, stop):
    pyramid = Pyramid.uniform(family, (2, 2, 2), 3)
    noise = mk.initial_noise(pyramid, schedule, mk.SCHEDULES.index(schedule))
    rng = torch.Generator().manual_seed(10 + mk.SCHEDULES.index(schedule))
    with torch.no_grad():
        x0, stage, process, _, _ = sample_few_step(
            mk.model, noise, pyramid, WINDOWS, schedule, cond=2.0, shift=mk.SHIFT, rng=rng, stop=stop
        )
    key = f"{family}/{schedule}/{stop}"
    assert stage == int(GOLDEN[f"{key}/stage"])
    assert [process.sigma_c, process.sigma_n] == GOLDEN[f"{key}/window"].tolist()
    close_rel(x0, GOLDEN[f"{key}/x0"])


@pytest.mark.parametrize(("schedule", "stop"), STOPS)
def test_ppf_rollout(schedule, stop):
    noise, ctx = mk.ppf_inputs(mk.SCHEDULES.index(schedule))
    rng = torch.Generator().manual_seed(20 + mk.SCHEDULES.index(schedule))
    with torch.no_grad():
        x0, stage, process, _, _ = sample_few_step(
            ppf_stages(mk.StageModel()), noise, None, WINDOWS, schedule, cond=ctx, shift=mk.SHIFT, rng=rng, stop=stop
        )
    assert stage == int(GOLDEN[f"ppf/{schedule}/{stop}/stage"])
    assert (process.sigma_c, process.sigma_n, process.project) == (0.0, 1.0, None)
    close_rel(x0, GOLDEN[f"ppf/{schedule}/{stop}/x0"])


@pytest.mark.parametrize("schedule", mk.SCHEDULES)
def test_sample_ppf(schedule):
    noise, ctx = mk.ppf_inputs(mk.SCHEDULES.index(schedule))
    rng = torch.Generator().manual_seed(30 + mk.SCHEDULES.index(schedule))
    few = sample_ppf(mk.StageModel(), noise, ctx, WINDOWS, schedule, shift=mk.SHIFT, few_step=True, rng=rng)
    close_rel(few, GOLDEN[f"sample_ppf/{schedule}/few_step"])
    euler = sample_ppf(
        mk.StageModel(), noise, ctx, WINDOWS, schedule, shift=mk.SHIFT, guidance=3.0, uncond=torch.zeros_like(ctx)
    )
    close_rel(euler, GOLDEN[f"sample_ppf/{schedule}/euler"])


@pytest.mark.parametrize("stop", range(5))
def test_only_the_stopped_evaluation_carries_a_gradient(stop):
    """The gradient of the stopped prediction is that of one evaluation on the (detached) state it reached."""
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def model(x_nat, t, cond):
        return w * torch.tanh(x_nat) + 1e-3 * t[:, None, :, None, None]

    noise = mk.initial_noise(pyramid, "2-2-1", 0).double()
    states = [noise]
    with torch.no_grad():
        sample_few_step(
            model, noise, pyramid, WINDOWS, "2-2-1", rng=torch.Generator().manual_seed(1),
            callback=lambda i, k, s, x: states.append(x),
        )  # fmt: skip
    x0, _, process, _, _ = sample_few_step(
        model, noise, pyramid, WINDOWS, "2-2-1", rng=torch.Generator().manual_seed(1), stop=stop
    )
    (grad,) = torch.autograd.grad(x0.sum(), w)
    sigmas = [float(s) for sp in Plan.build("2-2-1", pyramid, WINDOWS).stages for s in sp.grid[:-1]]
    (want,) = torch.autograd.grad(process.denoise(model, states[stop], sigmas[stop]).sum(), w)
    assert not states[stop].requires_grad and torch.equal(grad, want)
