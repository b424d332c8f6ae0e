r"""End-to-end CPU evidence that few-step distillation works: ``python -m pyrflow_fast.distill.evidence``.

1. *Teacher*: a ``tiny`` WanDiT is trained with the pyramidal trainer (3 stages, Haar 2x2x2, Wan's
   boundaries) on the synthetic latent videos of :mod:`pyrflow_fast.train.synthetic` (5x16x16).
2. *Distillation*: :class:`~pyrflow_fast.train.runner.Runner` distils it into a ``2-2-1``
   few-step student (``dmd-pt*`` by default), starting from the teacher.
3. *Metric*: the Fréchet distance of :func:`pyrflow_fast.train.evidence.features` (per-channel
   mean/std, radial spectrum, motion energy) between ``num`` samples of a model and ``num``
   samples of the **teacher at 10-10-10** (pyramidal Euler, one prompt per class in turn, other
   noise). Compared at the same 5 evaluations: the student with its few-step sampler, and the
   undistilled teacher with the Euler sampler and with the few-step (x0) sampler at ``2-2-1``.
   Two teacher runs at 10-10-10 with different noise give the noise floor. Lower is better.

>>> from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows
>>> Plan.build(SCHEDULE, PYRAMID, StageWindows(WAN_DEFAULT_BOUNDARIES)).total_steps  # model evaluations
5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

from ..contract import BackboneDenoiser, WanBackbone
from ..resample import Pyramid
from ..samplers import sample_euler, sample_few_step
from ..train.evidence import (
    _config,
    features,
    finish_evidence,
    frechet_distance,
    parse_evidence_args,
    run_dir,
    run_options,
)
from ..train.runner import Runner
from ..train.synthetic import SyntheticPyramids
from ..wan import WanDiT
from ..wan.checkpoint import load_wan
from .config import VARIANTS, DistillConfig

__all__ = ["PYRAMID", "SCHEDULE", "main", "run", "samples"]

SIZE = (5, 16, 16)
SCHEDULE = "2-2-1"
PYRAMID = Pyramid.uniform("haar", (2, 2, 2), 3, first_frame=True)


@torch.no_grad()
def samples(
    model: WanDiT, contexts: torch.Tensor, schedule: str, *, few_step: bool, num: int = 64, seed: int = 0
) -> torch.Tensor:
    """``num`` stage-0 samples of ``model`` (one prompt per class in turn, no CFG, shift 5)."""
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    cond = contexts[torch.arange(num) % contexts.shape[0]]
    plan = Plan.build(schedule, PYRAMID, windows, shift=5.0)
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(PYRAMID.shapes((num, model.config.in_dim, *SIZE))[plan.top], generator=rng)
    run = sample_few_step if few_step else sample_euler
    denoiser = BackboneDenoiser(WanBackbone(model.eval()))
    return run(denoiser, noise, PYRAMID, windows, plan, cond=cond, shift=5.0, rng=rng)


def run(
    teacher_steps: int = 800,
    distill_steps: int = 400,
    *,
    variant: str = "dmd-pt*",
    lr: float = 2e-3,
    distill_lr: float = 3e-4,
    batch_size: int = 8,
    lora_rank: int = 0,
    num: int = 64,
    distill_overrides: dict | None = None,
    out_dir: str | Path | None = None,
    log=print,
) -> dict:
    """Train the teacher, distil it, measure; returns the numbers (see the module docstring).

    :param distill_overrides: more ``[distill]`` fields of the distillation config.
    """
    with run_dir(out_dir) as out:
        start = time.perf_counter()
        train = SyntheticPyramids(256, PYRAMID, size=SIZE, split_seed=0)
        Runner(_config(out, "teacher", stages=3, steps=teacher_steps, lr=lr), dataset=train).fit()
        teacher_dir = out / "teacher" / "export"
        log(f"[{time.perf_counter() - start:6.1f} s] teacher: {teacher_steps} pyramidal steps")
        config = DistillConfig.from_dict(
            {
                "model": {"config": "tiny", "path": str(teacher_dir)},
                "data": {"kind": "synthetic", "synthetic_samples": 256, "synthetic_size": list(SIZE)},
                "distill": {
                    "variant": variant,
                    "schedule": SCHEDULE,
                    "guidance": 1.0,
                    "lora_rank": lora_rank,
                    "teacher_finetune_steps": 50,
                    "teacher_finetune_lr": 5e-4,
                    **(distill_overrides or {}),
                },
                "optim": {"lr": distill_lr, "warmup_steps": 0, "weight_decay": 0.0},
                "train": {
                    "output_dir": str(out / "student"),
                    "steps": distill_steps,
                    "batch_size": batch_size,
                    "gradient_checkpointing": False,
                    "progress": False,
                    "device": "cpu",
                },
                "checkpoint": {"every": distill_steps, "keep_last": 1},
            }
        )
        history = Runner(config, dataset=train).fit()
        log(
            f"[{time.perf_counter() - start:6.1f} s] student: {distill_steps} iterations of {variant} "
            f"({len([m for m in history if 'generator_loss' in m])} generator updates)"
        )
        teacher = load_wan(teacher_dir)
        student = load_wan(out / "student" / "export")
        ctx = train.contexts
        ref = features(samples(teacher, ctx, "10-10-10", few_step=False, num=num, seed=1))
        res = {
            "variant": variant,
            "teacher_steps": teacher_steps,
            "distill_steps": distill_steps,
            "num": num,
            "fd_floor_teacher_10-10-10": frechet_distance(
                features(samples(teacher, ctx, "10-10-10", few_step=False, num=num, seed=2)), ref
            ),
            "fd_teacher_euler_2-2-1": frechet_distance(
                features(samples(teacher, ctx, SCHEDULE, few_step=False, num=num, seed=3)), ref
            ),
            "fd_teacher_few_step_2-2-1": frechet_distance(
                features(samples(teacher, ctx, SCHEDULE, few_step=True, num=num, seed=3)), ref
            ),
            "fd_student_few_step_2-2-1": frechet_distance(
                features(samples(student, ctx, SCHEDULE, few_step=True, num=num, seed=3)), ref
            ),
        }
        res["seconds"] = time.perf_counter() - start
        return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyrflow_fast.distill.evidence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-steps", type=int, default=800)
    ap.add_argument(
        "--distill-steps",
        type=int,
        default=400,
        help="distillation iterations (critic updates; generator every critic_ratio = 5)",
    )
    ap.add_argument(
        "--variant",
        default="dmd-pt*",
        choices=[v for v in VARIANTS if v != "ppf"],
        help="distillation route (the PPF student samples on the full latent, outside this metric's sampler)",
    )
    ap.add_argument("--distill-lr", type=float, default=3e-4)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--num", type=int, default=64, help="samples per Fréchet distance")
    args = parse_evidence_args(ap, argv)
    res = run(**run_options(args))
    print(f"Fréchet feature distance to the teacher's 10-10-10 samples ({res['num']} samples each; lower is better):")
    for key in (
        "fd_floor_teacher_10-10-10",
        "fd_teacher_euler_2-2-1",
        "fd_teacher_few_step_2-2-1",
        "fd_student_few_step_2-2-1",
    ):
        print(f"  {key[3:]:>24}: {res[key]:.4f}")
    return finish_evidence(res, args)


if __name__ == "__main__":
    sys.exit(main())
