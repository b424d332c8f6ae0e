"""Golden roll-outs of the distillation loop before the few-step sampler took them over.

``python tests/golden/make_rollout_golden.py SNAPSHOT`` runs ``rollout``, ``ppf_rollout`` and
``sample_ppf`` of a checkout ``SNAPSHOT`` of commit 9f518a0 (the last one with their own loops;
``git worktree add SNAPSHOT 9f518a0``) and writes ``rollout_golden.npz`` next to this file.
tests/fast/test_rollout_golden.py checks that ``pyrflow_fast.samplers.sample_few_step(stop=...)``
reproduces every stop. The models are deterministic closed forms (no random weights), so the
fixtures do not depend on a backbone's code.
"""

import pathlib
import sys

import numpy as np
import torch

PATH = pathlib.Path(__file__).with_name("rollout_golden.npz")
FULL = (1, 4, 5, 8, 8)  # (B, C, F, H, W): F = 1 + 4 under the first-frame rule
PPF_FULL = (1, 4, 2, 8, 8)
BOUNDARIES = (5 / 9, 15 / 17)
SCHEDULES = ("2-2-1", "1-1-1", "0-0-2")
FAMILIES = ("haar", "dct")
SHIFT = 5.0


def model(x_nat, t, cond):
    """A nonlinear natural-scale stand-in backbone with per-frame timesteps ``(B, F)`` and a condition."""
    return 0.8 * torch.tanh(x_nat) - 0.3 * x_nat + 1e-3 * float(cond) * t[:, None, :, None, None]


class StageModel:
    """A stand-in :class:`~pyrflow_fast.ppf.PPFWan`: ``ppf(x, t, context, stage)`` with a stage-dependent map."""

    num_stages = 3

    def __call__(self, x, t, context, stage=0):
        t = t.reshape(t.shape[0], -1)[:, None, :, None, None]  # (B,) or per frame (B, F)
        # per-sample context mean: batch entries stay independent (guided CFG runs both branches as one batch)
        c = context.reshape(context.shape[0], -1).mean(1)[:, None, None, None, None]
        return (0.5 + 0.2 * stage) * torch.tanh(x) - 0.1 * stage * x + 1e-3 * t * c


def steps_of(schedule):
    return tuple(int(n) for n in schedule.split("-"))


def initial_noise(pyramid, schedule, seed):
    """White noise at the coarsest stage with steps."""
    steps = steps_of(schedule)
    top = len(steps) - 1 - next(k for k, n in enumerate(steps) if n > 0)
    return torch.randn(pyramid.shapes(FULL)[top], generator=torch.Generator().manual_seed(seed))


def ppf_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(PPF_FULL, generator=gen), torch.randn(1, 3, 8, generator=gen)


def compute() -> dict[str, np.ndarray]:
    """Every stop of every case with the snapshot's loops (the snapshot must be first on ``sys.path``)."""
    from pyrflow_fast.distill.loop import ppf_rollout, rollout
    from pyrflow_fast.ppf import sample_ppf
    from pyrflow_fast.resample import Pyramid
    from pyrflow_ref.windows import StageWindows

    windows = StageWindows(BOUNDARIES)
    out = {}
    for family in FAMILIES:
        pyramid = Pyramid.uniform(family, (2, 2, 2), 3)
        for n, schedule in enumerate(SCHEDULES):
            noise = initial_noise(pyramid, schedule, n)
            for stop in range(sum(steps_of(schedule))):
                x0, stage, process = rollout(
                    model, noise, pyramid, windows, schedule, stop, cond=2.0, shift=SHIFT,
                    generator=torch.Generator().manual_seed(10 + n), grad=False,
                )  # fmt: skip
                key = f"{family}/{schedule}/{stop}"
                out[f"{key}/x0"] = x0.numpy()
                out[f"{key}/stage"] = np.array(stage)
                out[f"{key}/window"] = np.array([process.sigma_c, process.sigma_n])
    ppf = StageModel()
    for n, schedule in enumerate(SCHEDULES):
        noise, ctx = ppf_inputs(n)
        for stop in range(sum(steps_of(schedule))):
            x0, stage, _ = ppf_rollout(
                ppf, noise, windows, schedule, stop, cond=ctx, shift=SHIFT,
                generator=torch.Generator().manual_seed(20 + n), grad=False,
            )  # fmt: skip
            out[f"ppf/{schedule}/{stop}/x0"] = x0.numpy()
            out[f"ppf/{schedule}/{stop}/stage"] = np.array(stage)
        gen = torch.Generator().manual_seed(30 + n)
        out[f"sample_ppf/{schedule}/few_step"] = sample_ppf(
            ppf, noise, ctx, windows, schedule, shift=SHIFT, few_step=True, generator=gen
        ).numpy()
        out[f"sample_ppf/{schedule}/euler"] = sample_ppf(
            ppf, noise, ctx, windows, schedule, shift=SHIFT, guidance=3.0, uncond=torch.zeros_like(ctx)
        ).numpy()
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(sys.argv[1]).resolve()))
    np.savez_compressed(PATH, **compute())
    print(f"wrote {PATH}")
