"""Euler vs a multistep solver inside pyramid stages, on the analytic Gaussian video model (float64, CPU).

Usage::

    python benchmarks/gaussian_solvers.py [--shift 5.0] [--schedules 5-5-3 10-10-5 20-20-10 40-40-20] [--check]

``--check`` first runs ``dpm++2m`` and ``unipc`` on a plain (one-stage) Gaussian model next to diffusers' own
schedulers stepping the same sigmas and prints the largest differences.

The model is :class:`pyrflow_ref.gaussian.GaussianVideoModel` (Definition 1, power-law covariance on a
``(1, 9, 8, 8)`` latent, 3 stages, factors ``(2, 2, 2)`` with the first-frame rule, Wan's boundaries):
its velocity is the exact posterior one, so every sampler is linear in its noises and the covariance of
its output is exact (the identity bases of the initial noise and of each transition's noise pushed
through it in one batch). The error is that covariance against the data covariance, relative in the
Frobenius norm.

Solvers, one model evaluation per step each, on the same per-stage grids (:class:`pyrflow_ref.plan.Plan`):

- ``euler``: :func:`pyrflow_ref.samplers.sample_euler` (what ``generate`` runs);
- ``ddim``: the first-order exponential integrator in data prediction, per band of the stage process (the
  same update as Euler when ``alpha`` is affine in ``sigma``, as here: its column shows the two agree);
- ``dpm++2m``: DPM-Solver++(2M) (diffusers' ``DPMSolverMultistepScheduler``, ``algorithm_type="dpmsolver++"``);
- ``unipc``: UniPC of order 2 (diffusers' ``UniPCMultistepScheduler``, ``bh2``: Wan's solver), the 2M predictor
  plus the UniC corrector from the next step's model output (no extra evaluation; a stage's last step is not
  corrected);

both multistep solvers with ``solver_order=2``, restarted at every stage transition, first order on the first
and the last step of each stage. ``--check`` shows they step as diffusers' own schedulers do.

Inside stage ``i`` the sample is ``x = M x0 + sigma eps`` with ``M = a_low(sigma) P + a_high(sigma) (I - P)``
(:class:`pyrflow_ref.process.StageProcess`), so each band is a flow-matching process with its own
``alpha`` and log-SNR ``lambda = log(alpha / sigma)``; the exponential integrators step each band with its
own ``lambda`` (the high band starts at ``alpha = 0``, ``lambda = -inf``, at the stage's noisy end).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from pyrflow_ref.gaussian import GaussianVideoModel, power_law_covariance
from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import Pyramid
from pyrflow_ref.samplers import sample_euler, stage_process
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

LATENT = (1, 9, 8, 8)
SCHEDULES = ("5-5-3", "10-10-5", "20-20-10", "40-40-20")


def _bands(process, y: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low P y + high (I - P) y`` (``P = I`` in a stage without a projection, where both bands agree)."""
    if process.project is None:
        return low * y
    py = process.project(y)
    return low * py + high * (y - py)


def _exp_step(process, x, s: float, t: float, m: np.ndarray, terms=()) -> np.ndarray:
    """From ``x`` at ``s`` to ``t``: ``(t/s) x + c (m + sum_j w_j y_j)`` per band with ``c = a_t - (t/s) a_s``, the
    data-prediction exponential integrator ``x_t = (sigma_t/sigma_s) x - alpha_t expm1(-h) D`` written without
    ``lambda`` (finite at ``alpha_s = 0``); ``terms``: pairs ``(w, y)`` of per-band weights and arrays."""
    coef = _alpha(process, t) - (t / s) * _alpha(process, s)
    out = (t / s) * x + _bands(process, m, *coef)
    for w, y in terms:
        out = out + _bands(process, y, *(coef * w))
    return out


def _alpha(process, sigma: float) -> np.ndarray:
    """Signal coefficients ``(a_low, a_high)`` of the stage sample at ``sigma``: ``M`` per band."""
    return np.sqrt(process.band_weights(sigma))


def _log_snr(process, sigma: float) -> np.ndarray:
    """``lambda = log(alpha / sigma)`` per band (``-inf`` where the band is pure noise, ``+inf`` at sigma 0)."""
    with np.errstate(divide="ignore"):
        return np.log(_alpha(process, sigma)) - np.log(sigma)


def _unic_weights(h: float, rk: float) -> tuple[float, float]:
    """Weights of ``m_2 - m_1`` and ``m_t - m_1`` in UniC's order-2 correction (diffusers' ``bh2``, data prediction):
    ``rho = R^-1 b`` with ``R = [[1, 1], [rk, 1]]``, its ``D1 = (m_2 - m_1) / rk``; ``rk = -inf`` (``m_2`` at a
    pure-noise band) is the limit ``(0, b_0)``."""
    hh = -h
    b_h = np.expm1(hh)
    phi1 = np.expm1(hh) / hh - 1
    b = np.array([phi1 / b_h, 2 * (phi1 / hh - 0.5) / b_h])
    if not np.isfinite(rk):
        return 0.0, float(b[0])
    rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), b)
    return float(rho[0] / rk), float(rho[1])


def sample_exponential(model, noise, pyramid, windows, schedule, *, shift, rng, solver: str):
    """``ddim`` (first order), ``dpm++2m`` or ``unipc`` (UniP-2 = DPM-Solver++(2M) plus the UniC corrector, as
    diffusers' ``UniPCMultistepScheduler`` with ``solver_order=2``, ``bh2``) per band, restarted at every stage
    transition, lower order on the first and the last step of each stage (diffusers' warm-up and
    ``lower_order_final``); other arguments as :func:`pyrflow_ref.samplers.sample_euler`."""
    plan = Plan.build(schedule, pyramid, windows, shift)
    x = np.asarray(noise, dtype=np.float64)
    for sp in plan.stages:
        process = stage_process(pyramid, plan, sp.stage, x.shape[-3])
        points = []  # (sigma, lambda per band, x0) of this stage's evaluations
        last = None  # the sample the predictor stepped from, and its order
        for k in range(sp.steps):
            s, t = float(sp.grid[k]), float(sp.grid[k + 1])
            m, lam = process.denoise(model, x, s), _log_snr(process, s)
            if solver == "unipc" and last is not None:  # correct x with the model output at x itself
                (x_prev, order), (s1, lam1, m1) = last, points[-1]
                if order == 1:
                    terms = [(np.full(2, 0.5), m - m1)]
                else:
                    lam2, m2 = points[-2][1:]
                    h, rk = lam - lam1, (lam2 - lam1) / (lam - lam1)
                    w = np.array([_unic_weights(h[j], rk[j]) for j in range(2)])
                    terms = [(w[:, 1], m - m1), (w[:, 0], m2 - m1)]
                x = _exp_step(process, x_prev, s1, s, m1, terms)
            points.append((s, lam, m))
            order = 1 if solver == "ddim" else min(2, k + 1, sp.steps - k)
            terms = []
            if order == 2:  # D = m + (h / 2 h_prev)(m - m_prev); h_prev = inf where the band started as noise
                lam1, m1 = points[-2][1:]
                terms = [(0.5 * (_log_snr(process, t) - lam) / (lam - lam1), m - m1)]
            last = (x, order)
            x = _exp_step(process, x, s, t, m, terms)
        if sp.stage > 0:
            transition = pyramid.transitions[sp.stage - 1]
            x = transition.up_noisy(x, sp.sigma_c, rng(transition.fine_shape(x.shape)))
    return x


def output_covariance(sampler, model, pyramid) -> np.ndarray:
    """Exact covariance of a sampler that is linear in its noises: every noise coordinate (initial noise,
    then each transition's) is one batch row set to 1, so the output rows are the columns of the linear map."""
    shapes = [model.shapes[-1], *(model.shapes[i] for i in range(pyramid.num_stages - 2, -1, -1))]
    sizes = [int(np.prod(s)) for s in shapes]
    rows, offsets = sum(sizes), np.cumsum([0, *sizes])
    draws = iter(range(1, len(shapes)))

    def block(j: int, shape) -> np.ndarray:
        out = np.zeros((rows, sizes[j]))
        out[offsets[j] : offsets[j + 1]] = np.eye(sizes[j])
        return out.reshape(rows, *shape[1:])

    out = sampler(block(0, (rows, *shapes[0])), lambda shape: block(next(draws), shape)).reshape(rows, -1)
    return out.T @ out


def check_against_diffusers(steps: int = 8, shift: float = 3.0) -> dict[str, float]:
    """Largest difference between :func:`sample_exponential` and diffusers' own schedulers (``dpm++2m``:
    ``DPMSolverMultistepScheduler``, ``unipc``: ``UniPCMultistepScheduler``) stepping the same sigma grid on a
    plain (one-stage) Gaussian model with its exact velocity (diffusers computes partly in float32)."""
    import diffusers
    import torch

    from pyrflow_ref.process import model_velocity

    shape, pyramid, windows = (1, 3, 4, 4), Pyramid(()), StageWindows(())
    model = GaussianVideoModel.latent(power_law_covariance(shape), shape, pyramid, windows)
    noise = np.random.default_rng(0).standard_normal((2, *shape))
    grid = Plan.build((steps,), pyramid, windows, shift).stages[0].grid
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2)
    schedulers = {
        "dpm++2m": diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", final_sigmas_type="zero", **flow
        ),
        "unipc": diffusers.UniPCMultistepScheduler(solver_type="bh2", final_sigmas_type="zero", **flow),
    }
    diffs = {}
    for name, scheduler in schedulers.items():
        ours = sample_exponential(model, noise, pyramid, windows, (steps,), shift=shift, rng=None, solver=name)
        scheduler.set_timesteps(steps)
        scheduler.sigmas = torch.tensor(grid, dtype=torch.float64)  # step on pyrflow's grid
        scheduler.timesteps = torch.tensor(grid[:-1] * 1000)
        x = torch.tensor(noise)
        for k in range(steps):  # flow_prediction is dx/dsigma, what model_velocity returns
            v = model_velocity(model, x.numpy(), grid[k], np.ones(shape[1]))
            x = scheduler.step(torch.tensor(v), scheduler.timesteps[k], x).prev_sample
        diffs[name] = float(np.abs(x.numpy() - ours).max())
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shift", type=float, default=5.0, help="timestep shift of every stage grid (generate's)")
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    parser.add_argument("--check", action="store_true", help="first compare with diffusers' schedulers")
    args = parser.parse_args()
    if args.check:
        for name, diff in check_against_diffusers().items():
            print(f"{name} vs diffusers' scheduler (plain process, 8 steps, |x| ~ 1): max |diff| {diff:.1e}")
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3, first_frame=True)
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    model = GaussianVideoModel.latent(power_law_covariance(LATENT), LATENT, pyramid, windows)
    target = model.data_covariance()
    solvers = {
        "euler": sample_euler,
        "ddim": partial(sample_exponential, solver="ddim"),
        "dpm++2m": partial(sample_exponential, solver="dpm++2m"),
        "unipc": partial(sample_exponential, solver="unipc"),
    }
    start = time.perf_counter()
    print(f"latent {LATENT}, haar 3 stages, boundaries {WAN_DEFAULT_BOUNDARIES}, shift {args.shift}")
    print("relative covariance error ||C - C_data||_F / ||C_data||_F\n")
    print("| schedule | steps | " + " | ".join(solvers) + " | euler / unipc |")
    print("|---|---|" + "---|" * (len(solvers) + 1))
    for schedule in args.schedules:
        err = {}
        for name, run in solvers.items():
            run = partial(run, model, pyramid=pyramid, windows=windows, schedule=schedule, shift=args.shift)
            cov = output_covariance(lambda noise, rng, run=run: run(noise, rng=rng), model, pyramid)
            err[name] = float(np.linalg.norm(cov - target) / np.linalg.norm(target))
        steps = sum(int(s) for s in schedule.split("-"))
        cells = " | ".join(f"{e:.2e}" for e in err.values())
        print(f"| {schedule} | {steps} | {cells} | {err['euler'] / err['unipc']:.1f}x |")
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
