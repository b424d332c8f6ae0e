"""Text-to-video generation with a pyramidal Wan: :func:`generate` and ``python -m pyrflow_fast.sample``.

The model directory is a Wan2.1 download in the diffusers or the original layout
(:mod:`pyrflow_fast.pipeline.layout`), optionally with a ``pyrflow.json`` :class:`ModelCard` that says
what kind of checkpoint it is and which pyramid it was trained for. A directory without one is a
plain Wan checkpoint (``kind = "base"``, default schedule ``0-0-50``).

- ``base`` and ``pyramidal`` checkpoints sample with the pyramidal Euler sampler and CFG;
- ``distilled`` checkpoints sample with the few-step x0-prediction sampler, without CFG.

Each stage has a fixed latent shape, so ``compile=True`` wraps the backbone in ``torch.compile``
(one static graph per stage; ``mode="reduce-overhead"`` adds CUDA graphs on a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pyrflow_ref.media import to_uint8, write_video
from pyrflow_ref.resample import FAMILIES
from pyrflow_ref.samplers import plan_schedule
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows, format_schedule, parse_schedule

from .contract import WanBackbone
from .pipeline import WanComponents, check_device, load_components
from .resample import Pyramid
from .samplers import cfg, sample_euler, sample_few_step

KINDS = ("base", "pyramidal", "distilled")
SAMPLERS = ("auto", "euler", "few-step")
UNCONDS = ("prompt", "zeros")
CARD_FILE = "pyrflow.json"
PPF_FILE = "ppf_levels.safetensors"
DEFAULT_SCHEDULE = {"base": "0-0-50", "pyramidal": "20-20-10", "distilled": "2-2-1"}


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is (stored as ``pyrflow.json`` in the model directory).

    :param kind: ``base`` (plain Wan), ``pyramidal`` (pyramidally finetuned) or ``distilled``
        (few-step generator, no CFG).
    :param num_stages: pyramid stages the checkpoint was trained for.
    :param boundaries: inner stage boundaries, finest first.
    :param resampler: resampler family (``haar``, ``dct``).
    :param factors: per-level factors ``(T, H, W)`` on the latent.
    :param rope: ``integer`` or ``scaled`` RoPE positions at coarse stages.
    :param schedule: default schedule.
    :param ppf_patches: per-level patches ``(T, H, W)`` of a pyramidal-patchification checkpoint
        (finest first, one per stage; :mod:`pyrflow_fast.ppf`), whose per-level layers are in
        ``ppf_levels.safetensors``; empty: a resolution-pyramid checkpoint.
    :param uncond: unconditional branch of CFG: ``prompt`` (the negative prompt's embedding, as
        Wan) or ``zeros`` (the all-zero context, for models trained with ``data.text_dropout``).
    :param guidance: default CFG scale (``base`` and ``pyramidal`` checkpoints).
    """

    kind: str = "base"
    num_stages: int = 3
    boundaries: tuple[float, ...] = WAN_DEFAULT_BOUNDARIES
    resampler: str = "haar"
    factors: tuple[int, int, int] = (2, 2, 2)
    rope: str = "integer"
    schedule: str | None = None
    ppf_patches: tuple[tuple[int, int, int], ...] = ()
    uncond: str = "prompt"
    guidance: float = 5.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {self.kind!r}; expected one of {KINDS}")
        if self.resampler not in FAMILIES or self.resampler in ("orthogonal", "avgpool"):
            raise ValueError(f"unknown resampler {self.resampler!r} for sampling; expected 'haar' or 'dct'")
        if len(self.boundaries) != self.num_stages - 1:
            raise ValueError(
                f"{self.num_stages} stages need {self.num_stages - 1} boundaries, got {list(self.boundaries)}"
            )
        StageWindows(self.boundaries)
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        object.__setattr__(self, "factors", tuple(int(f) for f in self.factors))
        if self.schedule is None:
            default = DEFAULT_SCHEDULE[self.kind]
            object.__setattr__(
                self,
                "schedule",
                default if self.num_stages == 3 else "-".join(["0"] * (self.num_stages - 1) + [default.split("-")[-1]]),
            )
        parse_schedule(self.schedule, self.num_stages)
        object.__setattr__(self, "ppf_patches", tuple(tuple(int(v) for v in p) for p in self.ppf_patches))
        if self.uncond not in UNCONDS:
            raise ValueError(f"unknown uncond {self.uncond!r}; expected one of {UNCONDS}")
        if self.ppf_patches and len(self.ppf_patches) != self.num_stages:
            raise ValueError(
                f"{self.num_stages} stages need {self.num_stages} PPF patches, got {list(self.ppf_patches)}"
            )

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelCard:
        """The card of ``model_dir``, or a ``base`` card when it has none."""
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown fields {unknown}; expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def pyramid(self) -> Pyramid:
        """The latent pyramid of the checkpoint (first-frame rule, as Wan's causal VAE needs)."""
        return Pyramid.uniform(self.resampler, self.factors, self.num_stages, first_frame=True)


def load_ppf(model_dir: str | Path, transformer: torch.nn.Module, card: ModelCard):
    """The :class:`~pyrflow_fast.ppf.PPFWan` of a PPF checkpoint: ``transformer`` plus the per-level layers of ``ppf_levels.safetensors``."""
    from safetensors.torch import load_file

    from .ppf import PPFWan

    path = Path(model_dir) / PPF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is a PPF checkpoint ({CARD_FILE}) but has no {PPF_FILE}")
    ppf = PPFWan(transformer, card.ppf_patches)
    state = load_file(str(path), device=str(next(transformer.parameters()).device))
    missing = ppf.load_state_dict(state, strict=False)
    extra = [k for k in missing.missing_keys if not k.startswith("model.")]
    if extra or missing.unexpected_keys:
        raise ValueError(f"{path}: missing {extra}, unexpected {missing.unexpected_keys}")
    return ppf.eval()


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

    def __init__(self, steps: tuple[int, ...], enabled: bool):
        self.steps = steps
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(steps), unit="step", desc="sampling")

    def __call__(self, stage: int, step: int, sigma: float, x: torch.Tensor) -> None:
        if self.bar is not None:
            n = self.steps[len(self.steps) - 1 - stage]
            self.bar.set_description(f"stage {stage} step {step + 1}/{n}")
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
    schedule: str | None = None,
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

    :param card: the checkpoint's card (``ModelCard()``: a plain Wan checkpoint).
    :param schedule: steps per stage, coarsest first (default: the card's).
    :param sampler: ``auto`` (by checkpoint kind), ``euler`` or ``few-step``.
    :param cfg_scale: guidance scale (default: the card's, 5.0 unless it says otherwise; distilled
        checkpoints: none).
    :param resampler: override the card's resampler family.
    :param compile: wrap the backbone in ``torch.compile`` (one static graph per stage).
    :param ppf: for a PPF checkpoint (``card.ppf_patches``), its model (:func:`load_ppf`); it is
        sampled on the full-resolution latent with :func:`pyrflow_fast.ppf.sample_ppf`.
    """
    if components.transformer is None:
        raise ValueError("the components were loaded without a transformer (load_components(..., transformer=True))")
    card = card or ModelCard()
    if resampler is not None:
        card = ModelCard(**{**asdict(card), "resampler": resampler})
    sampler, scale = resolve_sampler(card, sampler, cfg_scale)
    steps = parse_schedule(schedule or card.schedule, card.num_stages)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    shape = latent_shape(components, card, frames, height, width)
    pyramid = card.pyramid()
    windows = StageWindows(card.boundaries)
    _, _, top = plan_schedule(pyramid, windows, steps)
    device = next(components.transformer.parameters()).device

    backbone = WanBackbone(components.transformer, rope=card.rope)
    net = (
        torch.compile(backbone, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)
        if compile
        else backbone
    )
    full_size = shape[1:]

    def model(x_nat, t, context):
        return net(x_nat.float(), t, context, full_size=full_size)

    cond = components.encode_prompt(prompts).to(device)
    uncond = None  # without CFG the unconditional branch is never encoded
    if scale != 1.0:
        uncond = (
            torch.zeros_like(cond)
            if card.uncond == "zeros"
            else components.encode_prompt([negative_prompt] * len(prompts)).to(device)
        )
    guided = model if uncond is None else cfg(model, scale, uncond=uncond)

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
            windows,
            steps,
            shift=shift,
            few_step=sampler == "few-step",
            guidance=scale,
            uncond=uncond,
            generator=gen,
        )
        seconds = time.perf_counter() - start
        video = components.decode_latents(latents)
        return Generation(
            video, latents, format_schedule(steps), sampler, seconds, {"cfg_scale": scale, "card": asdict(card)}
        )
    coarse = pyramid.shapes((len(prompts), *shape))[top]
    noise = torch.randn(coarse, generator=gen, device=device, dtype=torch.float32)
    bar = _Progress(steps, progress)
    run = sample_few_step if sampler == "few-step" else sample_euler
    start = time.perf_counter()
    try:
        latents = run(guided, noise, pyramid, windows, steps, cond=cond, shift=shift, rng=gen, callback=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    video = components.decode_latents(latents)
    return Generation(
        video, latents, format_schedule(steps), sampler, seconds, {"cfg_scale": scale, "card": asdict(card)}
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
        "--resampler", default=None, choices=("haar", "dct"), help="override the checkpoint's resampler family"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")
    ap.add_argument("--compile", action="store_true", help="torch.compile each stage (CUDA graphs on a GPU)")
    ap.add_argument("--out", type=Path, default=Path("outputs/sample.mp4"), help=".mp4 or .gif")
    ap.add_argument("--save-latents", type=Path, default=None, help="also write the final latents (.safetensors)")
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        device = check_device(args.device)
        parse_schedule(args.schedule) if args.schedule else None
        if args.out.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"--out must end in .mp4 or .gif, got {args.out}")
        card = ModelCard.load(args.model_dir)
        resolve_sampler(card, args.sampler, args.cfg)
        components = load_components(args.model_dir, device=device, dtype=getattr(torch, args.dtype))
        ppf = load_ppf(args.model_dir, components.transformer, card) if card.ppf_patches else None
        result = generate(
            components,
            args.prompt,
            card=card,
            negative_prompt=args.negative_prompt,
            schedule=args.schedule,
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
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    print(
        f"{result.sampler} {result.schedule} ({args.frames}x{args.height}x{args.width}, seed {args.seed}): "
        f"{result.seconds:.2f} s sampling; wrote {', '.join(map(str, written))}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
