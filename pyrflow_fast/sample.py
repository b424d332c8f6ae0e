"""Text-to-video generation with a pyramidal Wan: :func:`generate` and ``python -m pyrflow_fast.sample``.

The model directory is a Wan2.1 download in the diffusers or the original layout
(:mod:`pyrflow_fast.pipeline.layout`), optionally with a ``pyrflow.json``
:class:`~pyrflow_fast.card.ModelCard` that says what kind of checkpoint it is and which pyramid it
was trained for (:mod:`pyrflow_fast.card`). A directory without one is a plain Wan checkpoint
(``kind = "base"``, default schedule ``0-0-50``).

- ``base`` and ``pyramidal`` checkpoints sample with the pyramidal Euler sampler and CFG;
- ``distilled`` checkpoints sample with the few-step x0-prediction sampler, without CFG.

Each stage has a fixed latent shape, so ``compile=True`` wraps the backbone in ``torch.compile``
(one static graph per stage; ``mode="reduce-overhead"`` adds CUDA graphs on a GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pyrflow_ref.media import to_uint8, write_video
from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import TRANSITION_FAMILIES
from pyrflow_ref.windows import format_schedule

from .card import CARD_FILE, ModelCard, load_ppf
from .contract import BackboneDenoiser, WanBackbone
from .pipeline import WanComponents, check_device, load_components
from .samplers import guided, sample_euler, sample_few_step

SAMPLERS = ("auto", "euler", "few-step")


@dataclass
class Generation:
    """A generated batch: ``video`` ``(B, 3, F, H, W)`` in ``[-1, 1]`` and the final normalised ``latents``."""

    video: torch.Tensor
    latents: torch.Tensor
    schedule: str
    sampler: str
    seconds: float
    info: dict = field(default_factory=dict)


def latent_shape(components: WanComponents, card: ModelCard, frames: int, height: int, width: int) -> tuple[int, ...]:
    """Stage-0 latent shape ``(C, F, H, W)``; ValueError in pixel terms when the pyramid does not fit."""
    st, sh, sw = components.stride
    ft, fh, fw = (f ** (card.num_stages - 1) for f in card.factors)
    patch = components.transformer.config.patch_size if components.transformer is not None else (1, 1, 1)
    need_f, need_h, need_w = st * ft, sh * fh * patch[1], sw * fw * patch[2]
    problems = []
    if frames < 1 or (frames - 1) % need_f:
        problems.append(
            f"frames must be {need_f}k+1 (the VAE's {st}x temporal stride and the first-frame rule), got {frames}"
        )
    if height % need_h:
        problems.append(f"height must be divisible by {need_h} pixels, got {height}")
    if width % need_w:
        problems.append(f"width must be divisible by {need_w} pixels, got {width}")
    if problems:
        raise ValueError(
            f"size {frames}x{height}x{width} does not fit a {card.num_stages}-stage pyramid: " + "; ".join(problems)
        )
    return (components.z_dim, *components.latent_size(frames, height, width))


def resolve_sampler(card: ModelCard, sampler: str, cfg_scale: float | None) -> tuple[str, float]:
    """(sampler, cfg scale) for a card; clear errors for a checkpoint of the wrong kind."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler == "auto":
        sampler = "few-step" if card.kind == "distilled" else "euler"
    if sampler == "few-step" and card.kind != "distilled":
        raise ValueError(f"the few-step sampler needs a distilled checkpoint; this one is {card.kind!r} ({CARD_FILE})")
    if sampler == "euler" and card.kind == "distilled":
        raise ValueError(f"this checkpoint is distilled: sample it with the few-step sampler, not Euler ({CARD_FILE})")
    if sampler == "few-step":
        if cfg_scale not in (None, 1.0):
            raise ValueError(f"distilled checkpoints run without CFG; got cfg scale {cfg_scale}")
        return sampler, 1.0
    return sampler, card.guidance if cfg_scale is None else float(cfg_scale)


class _Progress:
    """A tqdm bar over all steps that shows the stage and the step inside it."""

    def __init__(self, plan: Plan, enabled: bool):
        self.plan = plan
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=plan.total_steps, unit="step", desc="sampling")

    def __call__(self, stage: int, step: int, sigma: float, x: torch.Tensor) -> None:
        if self.bar is not None:
            self.bar.set_description(f"stage {stage} step {step + 1}/{self.plan.steps_of(stage)}")
            self.bar.set_postfix(sigma=f"{sigma:.3f}", shape="x".join(map(str, x.shape[2:])))
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def generate(
    components: WanComponents,
    prompts: list[str] | str,
    *,
    card: ModelCard | None = None,
    negative_prompt: str = "",
    schedule: str | Plan | None = None,
    sampler: str = "auto",
    cfg_scale: float | None = None,
    shift: float = 5.0,
    seed: int = 0,
    frames: int = 81,
    height: int = 448,
    width: int = 832,
    resampler: str | None = None,
    compile: bool = False,
    progress: bool = True,
    ppf=None,
) -> Generation:
    """Generate videos for ``prompts`` with the components' transformer.

    :param card: the checkpoint's :class:`~pyrflow_fast.card.ModelCard` (``ModelCard()``: a plain Wan checkpoint).
    :param schedule: steps per stage, coarsest first (default: the card's), or its
        :meth:`~pyrflow_fast.card.ModelCard.plan` at ``shift``.
    :param sampler: ``auto`` (by checkpoint kind), ``euler`` or ``few-step``.
    :param cfg_scale: guidance scale (default: the card's, 5.0 unless it says otherwise; distilled
        checkpoints: none).
    :param resampler: override the card's resampler family.
    :param compile: wrap the backbone in ``torch.compile`` (one static graph per stage).
    :param ppf: for a PPF checkpoint (``card.ppf_patches``), its model (:func:`~pyrflow_fast.card.load_ppf`); it is
        sampled on the full-resolution latent with :func:`pyrflow_fast.ppf.sample_ppf`.
    """
    if components.transformer is None:
        raise ValueError("the components were loaded without a transformer (load_components(..., transformer=True))")
    card = card or ModelCard()
    if resampler is not None:
        card = ModelCard(**{**asdict(card), "resampler": resampler})
    sampler, scale = resolve_sampler(card, sampler, cfg_scale)
    plan = card.plan(schedule, shift)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    shape = latent_shape(components, card, frames, height, width)
    pyramid = card.pyramid()
    device = next(components.transformer.parameters()).device

    backbone = WanBackbone(components.transformer, rope=card.rope)
    net = (
        torch.compile(backbone, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)
        if compile
        else backbone
    )
    model = BackboneDenoiser(net, full_size=shape[1:])
    cond = components.encode_prompt(prompts).to(device)
    uncond = None  # without CFG the unconditional branch is never encoded
    if scale != 1.0:
        uncond = (
            torch.zeros_like(cond)
            if card.uncond == "zeros"
            else components.encode_prompt([negative_prompt] * len(prompts)).to(device)
        )
    denoiser = model if uncond is None else guided(model, scale, uncond=uncond)

    gen = torch.Generator(device=device).manual_seed(int(seed))
    if card.ppf_patches:
        from .ppf import sample_ppf

        if ppf is None:
            raise ValueError(
                f"a PPF checkpoint ({CARD_FILE} has ppf_patches) needs ppf=load_ppf(model_dir, transformer, card)"
            )
        noise = torch.randn((len(prompts), *shape), generator=gen, device=device, dtype=torch.float32)
        start = time.perf_counter()
        latents = sample_ppf(
            ppf,
            noise,
            cond,
            plan.windows,
            plan,
            shift=shift,
            few_step=sampler == "few-step",
            guidance=scale,
            uncond=uncond,
            rng=gen,
        )
    else:
        coarse = pyramid.shapes((len(prompts), *shape))[plan.top]
        noise = torch.randn(coarse, generator=gen, device=device, dtype=torch.float32)
        bar = _Progress(plan, progress)
        run = sample_few_step if sampler == "few-step" else sample_euler
        start = time.perf_counter()
        try:
            latents = run(denoiser, noise, pyramid, plan.windows, plan, cond=cond, shift=shift, rng=gen, callback=bar)
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    video = components.decode_latents(latents)
    return Generation(
        video, latents, format_schedule(plan.steps), sampler, seconds, {"cfg_scale": scale, "card": asdict(card)}
    )


def save(result: Generation, out: str | Path, *, fps: int = 16, latents: str | Path | None = None) -> list[Path]:
    """Write the first video of ``result`` to ``out`` (``.mp4`` or ``.gif``) and optionally the latents."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for b, video in enumerate(result.video.float().cpu().numpy()):
        path = out if b == 0 else out.with_name(f"{out.stem}_{b}{out.suffix}")
        written.append(write_video(to_uint8(video), path, fps=fps))
    if latents is not None:
        from safetensors.torch import save_file

        latents = Path(latents)
        save_file(
            {"latents": result.latents.float().cpu().contiguous()},
            str(latents),
            metadata={"schedule": result.schedule, "sampler": result.sampler},
        )
        written.append(latents)
    return written


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyrflow-sample", description="Generate a video with a (pyramidal) Wan2.1 checkpoint."
    )
    ap.add_argument(
        "--model-dir", required=True, type=Path, help="local Wan2.1 directory (diffusers or original layout)"
    )
    ap.add_argument("--prompt", action="append", required=True, help="text prompt (repeat for a batch)")
    ap.add_argument("--negative-prompt", default="", help="negative prompt for CFG")
    ap.add_argument(
        "--schedule",
        default=None,
        help="steps per stage, coarsest first, e.g. 20-20-10, 0-0-50, 2-2-1 (default: the checkpoint's)",
    )
    ap.add_argument("--sampler", default="auto", choices=SAMPLERS, help="auto picks few-step for distilled checkpoints")
    ap.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="CFG scale (default: the checkpoint card's, 5.0 for Wan; none for distilled checkpoints)",
    )
    ap.add_argument("--shift", type=float, default=5.0, help="timestep shift of the stage grids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=81, help="pixel frames, 16k+1 for 3 stages")
    ap.add_argument("--height", type=int, default=448, help="pixels, divisible by 64 for 3 stages")
    ap.add_argument("--width", type=int, default=832, help="pixels, divisible by 64 for 3 stages")
    ap.add_argument(
        "--resampler", default=None, choices=TRANSITION_FAMILIES, help="override the checkpoint's resampler family"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")
    ap.add_argument("--compile", action="store_true", help="torch.compile each stage (CUDA graphs on a GPU)")
    ap.add_argument("--out", type=Path, default=Path("outputs/sample.mp4"), help=".mp4 or .gif")
    ap.add_argument("--save-latents", type=Path, default=None, help="also write the final latents (.safetensors)")
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def run_cli(ap: argparse.ArgumentParser, argv: list[str] | None, work: Callable[[argparse.Namespace], str]) -> int:
    """Run a generating CLI: ``work(args)`` returns the summary for stderr; bad input (ValueError,
    FileNotFoundError: a size, schedule or model directory) becomes a usage error, not a traceback."""
    args = ap.parse_args(argv)
    try:
        summary = work(args)
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    print(summary, file=sys.stderr)
    return 0


def _sample(args: argparse.Namespace) -> str:
    device = check_device(args.device)
    if args.out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out must end in .mp4 or .gif, got {args.out}")
    card = ModelCard.load(args.model_dir)
    plan = card.plan(args.schedule, args.shift)  # parsed once, checked against the card before loading
    resolve_sampler(card, args.sampler, args.cfg)
    components = load_components(args.model_dir, device=device, dtype=getattr(torch, args.dtype))
    ppf = load_ppf(args.model_dir, components.transformer, card) if card.ppf_patches else None
    result = generate(
        components,
        args.prompt,
        card=card,
        negative_prompt=args.negative_prompt,
        schedule=plan,
        sampler=args.sampler,
        cfg_scale=args.cfg,
        shift=args.shift,
        seed=args.seed,
        frames=args.frames,
        height=args.height,
        width=args.width,
        resampler=args.resampler,
        compile=args.compile,
        progress=not args.no_progress,
        ppf=ppf,
    )
    written = save(result, args.out, fps=args.fps, latents=args.save_latents)
    return (
        f"{result.sampler} {result.schedule} ({args.frames}x{args.height}x{args.width}, seed {args.seed}): "
        f"{result.seconds:.2f} s sampling; wrote {', '.join(map(str, written))}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, _sample)


if __name__ == "__main__":
    raise SystemExit(main())
