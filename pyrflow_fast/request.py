"""What a generation asks for, checked before any weights load: :class:`Options`, :func:`prepare`, :class:`Request`.

:func:`prepare` resolves the :class:`Options` of a request against the checkpoint's
:class:`~pyrflow_fast.card.ModelCard` and the model's :class:`~pyrflow_fast.pipeline.geometry.Geometry`
(read from the configuration files): sampler and guidance, solver, schedule (one
:class:`~pyrflow_ref.plan.Plan`), seed, size (padded to the pyramid's multiple when it does not divide,
see :mod:`pyrflow_fast.sample`), negative prompt and attention backend. The CLI calls it before
loading, :func:`~pyrflow_fast.sample.generate` again with the loaded components; both name the valid
choices when one cannot run.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import format_schedule

from .card import CARD_FILE, ModelCard
from .pipeline.geometry import Geometry
from .solvers import make_scheduler, scheduler_solver
from .wan.attention import BACKENDS
from .wan.attention import available as available_attention

SAMPLERS = ("auto", "euler", "few-step")


CONTEXT_PARALLEL = ("ulysses", "ring")
"""Context-parallel attention methods (:mod:`pyrflow_fast.parallel`)."""


SOLVERS = ("auto", "pyramid", "unipc", "euler")
"""``pyramid``: pyrflow's samplers on its stage grids (any schedule); ``unipc``/``euler``: diffusers'
``UniPCMultistepScheduler``/``FlowMatchEulerDiscreteScheduler`` on a plain schedule; ``auto``: the model
folder's scheduler (Wan's UniPC without one) for a plain schedule of a non-distilled checkpoint, else ``pyramid``."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


WAN_SIZE = (81, 480, 832)
"""Wan2.1's default ``(frames, height, width)`` (480p), used when the card records no size."""


PYRAMID_SHIFT = 5.0
"""Default timestep shift of pyrflow's stage grids (Wan's value); diffusers' solvers take the scheduler config's."""


WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""Wan2.1's default negative prompt (``sample_neg_prompt`` of ``wan/configs/shared_config.py``)."""


@dataclass(frozen=True)
class Options:
    """The request options as the caller gave them, before :func:`prepare` checks and resolves them: the one list
    of them, which :func:`~pyrflow_fast.sample.generate` documents (with its defaults; ``None``: the card's or
    Wan's) and the CLI and :class:`~pyrflow_fast.pipeline.pyramidal.PyramidalWanPipeline` pass on by name."""

    negative_prompt: str | None
    schedule: str | Plan | None
    sampler: str
    solver: str
    guidance_scale: float | None
    shift: float | None
    seed: int | None
    frames: int | None
    height: int | None
    width: int | None
    resampler: str | None
    attention: str

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> Options:
        """The options among ``values`` (a function's ``locals()``, an argparse namespace's ``vars()``)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Request:
    """A checked generation request (from :func:`prepare`): what :func:`~pyrflow_fast.sample.generate` will run.

    ``size`` is the video ``(frames, height, width)``; ``latent`` its latent ``(F, H, W)``;
    ``padded`` the latent grid the sampler runs on (equal to ``latent`` unless the pyramid needs
    padding); ``start`` the ``(F, H, W)`` of the starting noise (the coarsest stage with steps, on
    ``padded``).
    """

    card: ModelCard
    plan: Plan
    sampler: str
    solver: str
    guidance_scale: float
    shift: float | None
    seed: int
    size: tuple[int, int, int]
    latent: tuple[int, int, int]
    padded: tuple[int, int, int]
    start: tuple[int, ...]
    negative_prompt: str
    attention: str


def resolve_sampler(card: ModelCard, sampler: str, guidance_scale: float | None) -> tuple[str, float]:
    """(sampler, cfg scale) for a card; clear errors for a checkpoint of the wrong kind or a non-finite scale."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise ValueError(f"the CFG scale must be a finite number, got {guidance_scale}")
    if sampler == "auto":
        sampler = "few-step" if card.kind == "distilled" else "euler"
    if sampler == "few-step" and card.kind != "distilled":
        raise ValueError(f"the few-step sampler needs a distilled checkpoint; this one is {card.kind!r} ({CARD_FILE})")
    if sampler == "euler" and card.kind == "distilled":
        raise ValueError(f"this checkpoint is distilled: sample it with the few-step sampler, not Euler ({CARD_FILE})")
    if sampler == "few-step":
        if guidance_scale not in (None, 1.0):
            raise ValueError(f"distilled checkpoints run without CFG; got cfg scale {guidance_scale}")
        return sampler, 1.0
    return sampler, card.guidance if guidance_scale is None else float(guidance_scale)


def resolve_solver(solver: str, sampler: str, plan: Plan, scheduler_config: dict | None, ppf: bool = False) -> str:
    """The solver that runs: ``pyramid``, ``unipc`` or ``euler`` (see :data:`SOLVERS`); ValueError for a
    diffusers solver on a pyramidal schedule, with the few-step sampler or for a PPF checkpoint (``ppf``)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    plain = plan.top == 0
    if solver == "auto":
        return scheduler_solver(scheduler_config) if plain and sampler == "euler" and not ppf else "pyramid"
    if solver != "pyramid":
        if ppf:
            raise ValueError(f"a PPF checkpoint ({CARD_FILE} has ppf_patches) samples with --solver pyramid")
        if sampler != "euler":
            raise ValueError(
                f"--solver {solver} integrates a flow; a distilled checkpoint samples with --solver pyramid"
            )
        if not plain:
            raise ValueError(
                f"--solver {solver} runs plain schedules only (0-0-N: every step at the finest stage), got "
                f"{format_schedule(plan.steps)}; use --solver pyramid (pyrflow's Euler) for a pyramidal schedule"
            )
    return solver


def _round_up(n: int, multiple: int, first_frame: bool = False) -> int:
    """Smallest ``m >= n`` with ``m % multiple == 0`` (``first_frame``: ``(m - 1) % multiple == 0``)."""
    if first_frame:
        return 1 + -(-(n - 1) // multiple) * multiple
    return -(-n // multiple) * multiple


def fit_size(
    geometry: Geometry, card: ModelCard, plan: Plan, frames: int, height: int, width: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(requested latent ``(F, H, W)``, padded latent ``(F, H, W)``) of a ``frames x height x width`` video.

    The request must be what Wan accepts: ``frames = st k + 1`` and ``height``, ``width`` divisible
    by the VAE stride times the patch (16 pixels for Wan2.1). The padded grid adds the fewest latent
    frames, rows and columns (at the end) that the pyramid's coarsest stage with steps needs
    (``1 + T^s k`` frames, ``H^s * patch`` rows; PPF: every stage's patch divides it); a plain
    schedule needs none. ValueError in pixel terms, with the nearest valid sizes.
    """
    (st, sh, sw), (_, ph, pw) = geometry.stride, geometry.patch
    problems = []
    if frames < 1 or (frames - 1) % st:
        lo = max(1, (frames - 1) // st * st + 1)
        problems.append(
            f"frames must be {st}k+1 (the VAE's {st}x temporal stride), e.g. {lo} or {lo + st}; got {frames}"
        )
    for name, n, s, p in (("height", height, sh, ph), ("width", width, sw, pw)):
        if n < 1 or n % (s * p):
            lo = max(s * p, n // (s * p) * s * p)
            problems.append(
                f"{name} must be a positive multiple of {s * p} pixels (VAE stride {s} x patch {p}), "
                f"e.g. {lo} or {lo + s * p}; got {n}"
            )
    if problems:
        raise ValueError(f"size {frames}x{height}x{width} (frames x height x width): " + "; ".join(problems))
    latent = ((frames - 1) // st + 1, height // sh, width // sw)
    if card.ppf_patches:
        mults = [math.lcm(*(p[a] for p in card.ppf_patches)) for a in range(3)]
        return latent, tuple(_round_up(n, m) for n, m in zip(latent, mults, strict=True))
    ft, fh, fw = (f**plan.top for f in card.factors)
    padded = (_round_up(latent[0], ft, first_frame=True), _round_up(latent[1], fh * ph), _round_up(latent[2], fw * pw))
    return latent, padded


def check_prompts(prompts: list[str] | str | None, embeds: torch.Tensor | None) -> list[str] | None:
    if embeds is not None:
        if embeds.ndim != 3:
            raise ValueError(f"prompt_embeds must be (B, L, text_dim), got {tuple(embeds.shape)}")
        return None
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("give at least one prompt (a string), or prompt_embeds")
    for p in prompts:
        if not p.strip():
            warnings.warn(
                "an empty prompt samples the unconditional model (pass a description of the video)", stacklevel=3
            )
    return prompts


def prepare(
    card: ModelCard | None, geometry: Geometry, options: Options, *, scheduler_config: dict | None = None
) -> Request:
    """Check a generation request against ``card`` and ``geometry`` without touching any weights.

    ``options`` as :func:`~pyrflow_fast.sample.generate` takes them. ValueError naming the valid choices for a size,
    schedule, sampler, solver, guidance, shift, seed or attention backend that cannot run.
    """
    card = card or ModelCard()
    schedule, shift, seed, attention = options.schedule, options.shift, options.seed, options.attention
    if options.resampler is not None:
        card = replace(card, resampler=options.resampler)
    if shift is not None and not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"the timestep shift must be a positive finite number, got {shift}")
    sampler, scale = resolve_sampler(card, options.sampler, options.guidance_scale)
    if shift is not None:
        grid_shift = shift
    elif isinstance(schedule, Plan):
        grid_shift = schedule.shift
    else:
        grid_shift = card.shift if card.shift is not None else PYRAMID_SHIFT
    plan = card.plan(schedule, grid_shift)
    solver = resolve_solver(options.solver, sampler, plan, scheduler_config, ppf=bool(card.ppf_patches))
    if solver != "pyramid":
        make_scheduler(solver, scheduler_config, shift)  # the config is usable
    if seed is None:
        seed = secrets.randbits(63)
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"the seed must be in [0, 2**63), got {seed}")
    default = card.size or WAN_SIZE
    asked = (options.frames, options.height, options.width)
    size = tuple(int(d if v is None else v) for v, d in zip(asked, default, strict=True))
    latent, padded = fit_size(geometry, card, plan, *size)
    if attention not in BACKENDS:
        raise ValueError(f"unknown attention backend {attention!r}; expected one of {BACKENDS}")
    if attention not in available_attention():
        raise ValueError(f"attention backend {attention!r} is not available here; available: {available_attention()}")
    negative_prompt = WAN_NEGATIVE_PROMPT if options.negative_prompt is None else options.negative_prompt
    start = padded
    if not card.ppf_patches and plan.top > 0:
        start = card.pyramid().shapes((1, 1, *padded))[plan.top][2:]
    return Request(
        card, plan, sampler, solver, scale, shift, int(seed), size, latent, padded, tuple(start), negative_prompt,
        attention,
    )  # fmt: skip


def check_output(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` if a file can be written there: one of ``suffixes``, not a directory, every existing
    parent a writable directory; ValueError naming the problem otherwise."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} must end in {' or '.join(suffixes)}, got {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name such as {path / ('video' + suffixes[0])}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path} cannot be written: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: no write permission in {parent}")
    return path
