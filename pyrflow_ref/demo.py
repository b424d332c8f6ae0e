"""The main job until a trained model ships: pyramidal sampling of an analytic Gaussian video.

``python -m pyrflow_ref.demo --out outputs`` samples :class:`~pyrflow_ref.gaussian.SpectralGaussianVideo`
(a colour power-law video, exact posterior velocity) through the pyramidal Euler sampler and writes

- ``sample.gif`` (and ``sample.mp4`` when PyAV is installed): the generated video;
- ``stages.png``: one row per stage, coarsest on top: the clean estimate at the end of each stage,
  upsampled for display, frames across.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .gaussian import SpectralGaussianVideo
from .media import to_uint8, write_gif, write_mp4, write_strip
from .plan import Plan
from .process import x0_from_velocity
from .resample import Pyramid
from .samplers import model_velocity, sample_euler
from .windows import WAN_DEFAULT_BOUNDARIES, StageWindows

# Colour covariance of the demo: strongly correlated channels with a warm tint.
CHANNEL_COV = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.7], [0.6, 0.7, 1.0]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python -m pyrflow_ref.demo")
    ap.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (created)")
    ap.add_argument("--schedule", default="20-20-10", help="steps per stage, coarsest first")
    ap.add_argument("--frames", type=int, default=32, help="frames (divisible by 4 for 3 stages)")
    ap.add_argument("--size", type=int, default=128, help="height and width (divisible by 4)")
    ap.add_argument("--shift", type=float, default=5.0, help="timestep shift of the stage grids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=int, default=12)
    ap.add_argument("--scale", type=int, default=2, help="nearest upscaling of the written images")
    args = ap.parse_args(argv)

    pyramid = Pyramid.uniform("dct", (2, 2, 2), num_stages=3, first_frame=False)
    try:
        plan = Plan.build(args.schedule, pyramid, StageWindows(WAN_DEFAULT_BOUNDARIES), args.shift)
        # the Gaussian lives on the stages that take steps: coarsest stages with 0 steps are skipped
        eff, sub = plan.effective_windows, Pyramid(pyramid.transitions[: plan.top])
        model = SpectralGaussianVideo((3, args.frames, args.size, args.size), sub, eff, channel_cov=CHANNEL_COV)
    except ValueError as err:
        ap.error(str(err))
    rng = np.random.default_rng(args.seed)
    noise = rng.standard_normal((1, *model.shapes[-1]))

    stage_ends: dict[int, np.ndarray] = {}

    def record(stage: int, step: int, sigma: float, x: np.ndarray) -> None:
        if step != plan.steps_of(stage) - 1:
            return
        g = sub.gain(stage, x.shape[-3])
        if stage:  # show the stage's clean estimate, not its noisy end
            project = sub.transitions[stage].project if stage < plan.top else None
            v = model_velocity(model, x, sigma, g)
            x = x0_from_velocity(x, v, sigma, eff.sigma_c(stage), eff.sigma_n(stage), project)
        stage_ends[stage] = x[0] / g[:, None, None]  # natural scale for display

    start = time.perf_counter()
    video = sample_euler(model, noise, pyramid, plan.windows, plan, shift=plan.shift, rng=rng, callback=record)[0]
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video, -2.3, 2.3)  # the demo video has unit variance
    write_gif(frames, args.out / "sample.gif", args.scale, args.fps)
    wrote = ["sample.gif"]
    if write_mp4(frames, args.out / "sample.mp4", args.scale, args.fps):
        wrote.append("sample.mp4")
    write_strip(
        [to_uint8(stage_ends[i], -2.3, 2.3) for i in sorted(stage_ends, reverse=True)],
        args.out / "stages.png",
        8,
        args.scale,
    )
    wrote.append("stages.png")
    print(
        f"sampled a {args.frames}x{args.size}x{args.size} Gaussian video with schedule {args.schedule} "
        f"in {seconds:.2f} s; wrote {', '.join(str(args.out / w) for w in wrote)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
