"""Text-to-video generation with a pyramidal Wan: :func:`generate` and ``python -m pyrflow_fast.sample``.

The model directory is a Wan2.1 download in the diffusers or the original layout
(:mod:`pyrflow_fast.pipeline.layout`), optionally with a ``pyrflow.json``
:class:`~pyrflow_fast.card.ModelCard` that says what kind of checkpoint it is, which pyramid it
was trained for and at what size (:mod:`pyrflow_fast.card`). A directory without one is a plain
Wan checkpoint (``kind = "base"``, default schedule ``0-0-50``, size 81x480x832).

- a plain schedule (``0-0-N``: every step at the finest stage) of a ``base`` or ``pyramidal``
  checkpoint samples as Wan does, with diffusers' UniPC (or flow-matching Euler) scheduler on its
  sigma grid (:mod:`pyrflow_fast.solvers`; ``solver="pyramid"`` keeps pyrflow's Euler instead);
- other schedules sample with the pyramidal Euler sampler and CFG;
- ``distilled`` checkpoints sample with the few-step x0-prediction sampler, without CFG.

Sizes: Wan accepts ``frames = 4k + 1`` and heights and widths divisible by 16 (VAE stride times
patch); a plain schedule runs at exactly that size. A pyramid halves the latent per stage, so a
size the coarsest stage does not fit (480 pixels: a 60-row latent) is sampled on the stage-0 grid
padded up to the pyramid's multiple and cropped back at the end (theory §3.3, "Sizes the pyramid
does not divide"); a size that fits runs unpadded, exactly as before.

:func:`~pyrflow_fast.request.prepare` checks every choice against the card and the model's geometry, which
:func:`~pyrflow_fast.pipeline.geometry.read_geometry` reads from the configuration files, so the
CLI rejects a bad size, schedule, solver, guidance, attention backend or output path before any
weights load. Each stage has a fixed latent shape, so ``compile=True`` wraps the backbone in
``torch.compile`` (one static graph per stage; ``mode="reduce-overhead"`` adds CUDA graphs on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pyrflow_ref.media import to_uint8, write_video
from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import TRANSITION_FAMILIES
from pyrflow_ref.windows import format_schedule

from .card import CARD_FILE, ModelCard, load_ppf
from .cli_help import DefaultsFormatter
from .contract import BackboneDenoiser, backbone_for
from .parallel.plan import leave
from .pipeline import WanComponents, check_device, load_components
from .pipeline.components import run_device, running
from .pipeline.geometry import Geometry, read_geometry, read_scheduler_config
from .request import (
    CONTEXT_PARALLEL,
    DTYPES,
    PYRAMID_SHIFT,
    SAMPLERS,
    SOLVERS,
    WAN_SIZE,
    Options,
    check_output,
    check_prompts,
    prepare,
)
from .samplers import guided, sample_euler, sample_few_step
from .solvers import make_scheduler, sample_scheduler
from .train.lora import load_card_lora, stage_models
from .wan.attention import BACKENDS
from .wan.attention import use as use_attention


@dataclass
class Generation:
    """A generated batch: ``video`` ``(B, 3, F, H, W)`` in ``[-1, 1]`` and the final normalised ``latents``
    ``(B, C, F', H', W')``, both at exactly the requested size."""

    video: torch.Tensor
    latents: torch.Tensor
    schedule: str
    sampler: str
    seconds: float
    info: dict = field(default_factory=dict)
    seed: int = 0
    solver: str = "pyramid"


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


def _embeds(given: torch.Tensor | None, encode: Callable[[], torch.Tensor], batch: int, what: str, device) -> Any:
    """``given`` (checked to hold ``batch`` rows) or ``encode()``, on ``device`` in float32."""
    if given is None:
        return encode().to(device)
    if given.ndim != 3 or given.shape[0] != batch:
        raise ValueError(f"{what} must be ({batch}, L, text_dim), got {tuple(given.shape)}")
    return given.to(device=device, dtype=torch.float32)


@torch.no_grad()
def generate(
    components: WanComponents,
    prompts: list[str] | str | None = None,
    *,
    card: ModelCard | None = None,
    negative_prompt: str | None = None,
    schedule: str | Plan | None = None,
    sampler: str = "auto",
    solver: str = "auto",
    guidance_scale: float | None = None,
    shift: float | None = None,
    seed: int | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    resampler: str | None = None,
    compile: bool = False,
    progress: bool = True,
    ppf=None,
    latents: torch.Tensor | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    attention: str = "auto",
    lora: torch.nn.Module | None = None,
    context_parallel: str | None = None,
    cfg_parallel: bool = False,
    min_split_tokens: int | None = None,
    shard_blocks: bool = False,
    offload: bool = False,
    device: torch.device | str | None = None,
) -> Generation:
    """Generate videos for ``prompts`` with the components' transformer.

    :param card: the checkpoint's :class:`~pyrflow_fast.card.ModelCard` (``None``: a plain Wan checkpoint).
    :param negative_prompt: the unconditional branch of CFG (default: Wan's built-in negative prompt,
        :data:`~pyrflow_fast.request.WAN_NEGATIVE_PROMPT`; ``""`` as diffusers' default); unused when the card's
        ``uncond`` is ``zeros``.
    :param schedule: steps per stage, coarsest first (default: the card's), or its
        :meth:`~pyrflow_fast.card.ModelCard.plan`.
    :param sampler: ``auto`` (by checkpoint kind), ``euler`` or ``few-step``.
    :param solver: ``auto``, ``pyramid``, ``unipc`` or ``euler`` (:data:`~pyrflow_fast.request.SOLVERS`).
    :param guidance_scale: guidance scale (default: the card's, 5.0 unless it says otherwise; distilled
        checkpoints: none).
    :param shift: timestep shift (default: the card's ``shift`` or 5.0 on pyrflow's grids, the scheduler config's for
        ``unipc``/``euler``: the components' ``scheduler_config`` or Wan's, 3.0).
    :param seed: seeds the starting noise and the transitions' noise (default: a random seed, in
        :attr:`Generation.seed`). ``unipc``/``euler`` draw the starting noise as diffusers does,
        from a CPU generator.
    :param frames: pixel frames (default: the card's ``size``, else 81); ``height``, ``width`` likewise
        (480, 832).
    :param resampler: override the card's resampler family.
    :param compile: wrap the backbone in ``torch.compile`` (one static graph per stage).
    :param ppf: for a PPF checkpoint (``card.ppf_patches``), its model (:func:`~pyrflow_fast.card.load_ppf`); it is
        sampled on the full-resolution latent with :func:`pyrflow_fast.ppf.sample_ppf`.
    :param latents: the starting noise ``(B, C, F, H, W)`` instead of drawing it: the requested latent size
        for a plain schedule, the coarsest stage's shape on the padded grid for a pyramidal one.
    :param prompt_embeds: ``(B, L, text_dim)`` text embeddings instead of encoding ``prompts``;
        ``negative_prompt_embeds`` likewise for the unconditional branch.
    :param dtype: computation dtype of the transformer: ``torch.bfloat16`` runs it under
        ``torch.autocast`` (default: the dtype of its weights).
    :param attention: attention backend (:data:`pyrflow_fast.wan.attention.BACKENDS`).
    :param lora: adapters on the transformer (:func:`pyrflow_fast.train.lora.load_card_lora`); a per-stage
        LoRA switches its adapter at every stage transition.
    :param context_parallel: ``"ulysses"`` or ``"ring"``: split the large stages' tokens over the ranks of
        the process group torchrun started (:mod:`pyrflow_fast.parallel`); every rank returns the same result.
    :param cfg_parallel: with ``context_parallel``, the two CFG branches run on the two halves of the ranks.
    :param min_split_tokens: with ``context_parallel``, forwards with fewer video tokens per sample run replicated
        (default: :data:`~pyrflow_fast.parallel.plan.DEFAULT_MIN_TOKENS`; 0 splits every forward it can).
    :param shard_blocks: with ``context_parallel`` on more than one rank, shard the transformer's blocks over the
        ranks with FSDP2 (:func:`~pyrflow_fast.parallel.wan.shard_blocks`, in place: ``components.transformer``
        stays sharded; already sharded blocks, e.g. from :func:`~pyrflow_fast.parallel.wan.load_sharded_wan`, are
        kept), so each rank stores ``1/N`` of their weights: the 14B on GPUs that cannot hold it whole.
    :param offload: keep every component on the CPU and move each to ``device`` only while it runs (the text
        encoder while it encodes, the transformer with its LoRA or PPF layers while it samples, the VAE while it
        decodes), then back: Wan's ``--offload_model``, diffusers' ``enable_model_cpu_offload``.
    :param device: where the models run: default the transformer's device (without ``offload`` it must be that),
        with ``offload`` CUDA when there is one, else the CPU.
    """
    if components.transformer is None:
        raise ValueError("the components were loaded without a transformer (load_components(..., transformer=True))")
    prompts = check_prompts(prompts, prompt_embeds)
    if context_parallel is None and (shard_blocks or min_split_tokens is not None):
        raise ValueError(
            "shard_blocks and min_split_tokens act on the ranks that split the tokens: pass context_parallel="
            f"{' or '.join(map(repr, CONTEXT_PARALLEL))} too (under torchrun)"
        )
    options = Options.pick(locals())
    request = prepare(card, Geometry.of(components), options, scheduler_config=components.scheduler_config)
    card, plan = request.card, request.plan
    batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
    weights = next(components.transformer.parameters())
    device, dtype = run_device(device, weights.device, offload), dtype or weights.dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
    start = (batch, components.z_dim, *request.start)
    if latents is not None and tuple(latents.shape) != start:
        raise ValueError(f"latents must be the starting noise {start} for schedule {format_schedule(plan.steps)}")

    transformer, seed = components.transformer, request.seed
    if context_parallel is not None:
        from .parallel import DEFAULT_MIN_TOKENS, ContextParallelWan, blocks_sharded, setup, shared_seed
        from .parallel import shard_blocks as shard

        if context_parallel not in CONTEXT_PARALLEL:
            raise ValueError(f"context_parallel must be one of {CONTEXT_PARALLEL}, got {context_parallel!r}")
        if compile or lora is not None or offload:
            raise ValueError("context_parallel runs neither with compile=True, offload=True nor LoRA files")
        min_tokens = DEFAULT_MIN_TOKENS if min_split_tokens is None else min_split_tokens
        cp_plan, groups = setup(context_parallel, cfg_parallel, min_tokens=min_tokens)
        if shard_blocks and not blocks_sharded(transformer):
            if torch.distributed.get_world_size() == 1:
                raise ValueError(
                    "shard_blocks=True on a single process has nothing to shard over: run under torchrun "
                    "--nproc-per-node N with N > 1"
                )
            shard(transformer)
        transformer = ContextParallelWan(transformer, cp_plan, groups)
        if ppf is not None:  # a PPF checkpoint samples through its PPFWan, split the same way
            ppf = ContextParallelWan(ppf, cp_plan, groups)
        seed = shared_seed(request.seed, device)  # every rank draws the same noise
    if lora is not None and card.ppf_patches:
        raise ValueError("LoRA files are not supported with PPF checkpoints")
    backbone = backbone_for(transformer, card.rope, components.text_len)
    net = (
        torch.compile(backbone, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)
        if compile
        else backbone
    )
    model = stage_models(BackboneDenoiser(net, full_size=request.padded, lora=lora), card.num_stages)
    negative = request.guidance_scale != 1.0 and card.uncond != "zeros"  # without CFG it is never encoded
    encodes = prompt_embeds is None or (negative and negative_prompt_embeds is None)
    with running(device, offload and encodes, components.text_encoder):
        cond = _embeds(prompt_embeds, lambda: components.encode_prompt(prompts), batch, "prompt_embeds", device)
        uncond = torch.zeros_like(cond) if request.guidance_scale != 1.0 and not negative else None
        if negative:
            negatives = [request.negative_prompt] * batch
            uncond = _embeds(
                negative_prompt_embeds, lambda: components.encode_prompt(negatives), batch, "negative_prompt_embeds",
                device,
            )  # fmt: skip
    if uncond is None:
        denoiser = model
    elif isinstance(model, list):  # per-stage LoRA: one denoiser per stage
        denoiser = [guided(m, request.guidance_scale, uncond=uncond) for m in model]
    else:
        denoiser = guided(model, request.guidance_scale, uncond=uncond)

    gen = torch.Generator(device=device).manual_seed(seed)
    bar = _Progress(plan, progress and not card.ppf_patches)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    start_time = time.perf_counter()
    try:
        # the text keys and values once per generation (WanDiT.text_cache: not with FSDP-sharded blocks)
        cache = getattr(components.transformer, "text_cache", None)
        text_cache = cache() if cache is not None else contextlib.nullcontext()
        placed = running(device, offload, ppf if card.ppf_patches else components.transformer, lora)
        with placed, use_attention(request.attention), autocast, text_cache:
            if request.solver != "pyramid":
                if latents is None:  # as diffusers' randn_tensor with a CPU generator
                    cpu = torch.Generator().manual_seed(seed)
                    latents = torch.randn(start, generator=cpu, dtype=torch.float32)
                scheduler = make_scheduler(request.solver, components.scheduler_config, request.shift)
                used_shift = scheduler.config.get("flow_shift", scheduler.config.get("shift"))
                x = latents.to(device=device, dtype=torch.float32)
                finest = denoiser[0] if isinstance(denoiser, list) else denoiser
                out = sample_scheduler(finest, x, scheduler, plan.steps_of(0), cond=cond, callback=bar)
            elif card.ppf_patches:
                used_shift = plan.shift
                from .ppf import sample_ppf

                if ppf is None:
                    raise ValueError(
                        f"a PPF checkpoint ({CARD_FILE} has ppf_patches) needs ppf=load_ppf(model_dir, transformer, "
                        "card)"
                    )
                if latents is None:
                    latents = torch.randn(start, generator=gen, device=device, dtype=torch.float32)
                few = request.sampler == "few-step"
                out = sample_ppf(
                    ppf, latents.to(device), cond, plan.windows, plan, shift=plan.shift, few_step=few,
                    guidance=request.guidance_scale, uncond=uncond, rng=gen,
                )  # fmt: skip
            else:
                used_shift = plan.shift
                if latents is None:
                    latents = torch.randn(start, generator=gen, device=device, dtype=torch.float32)
                run = sample_few_step if request.sampler == "few-step" else sample_euler
                out = run(
                    denoiser, latents.to(device), card.pyramid(), plan.windows, plan, cond=cond, shift=plan.shift,
                    rng=gen, callback=bar,
                )  # fmt: skip
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    f, h, w = request.latent
    out = out[:, :, :f, :h, :w].float()  # the padded rows, columns and frames are dropped once, here
    with running(device, offload, components.vae):
        video = components.decode_latents(out)
    info = {
        "guidance_scale": request.guidance_scale,
        "shift": used_shift,
        "size": request.size,
        "padded_latent": request.padded,
        "card": asdict(card),
    }
    return Generation(video, out, format_schedule(plan.steps), request.sampler, seconds, info, seed, request.solver)


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
        latents.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"latents": result.latents.float().cpu().contiguous()},
            str(latents),
            metadata={"schedule": result.schedule, "sampler": result.sampler, "solver": result.solver,
                      "seed": str(result.seed)},
        )  # fmt: skip
        written.append(latents)
    return written


_DTYPE_CHOICES = ("auto", *DTYPES)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyrflow-sample",
        description="Generate a video with a (pyramidal) Wan2.1 checkpoint.",
        formatter_class=DefaultsFormatter,
    )
    ap.add_argument(
        "--model-dir", required=True, type=Path, help="local Wan2.1 directory (diffusers or original layout)"
    )
    ap.add_argument("--prompt", dest="prompts", action="append", required=True, help="text prompt (repeat for a batch)")
    ap.add_argument(
        "--negative-prompt", default=None, help="negative prompt for CFG (default: Wan's built-in negative prompt)"
    )
    ap.add_argument(
        "--schedule",
        default=None,
        help="steps per stage, coarsest first, e.g. 20-20-10, 0-0-50, 2-2-1 (default: the checkpoint's)",
    )
    ap.add_argument("--sampler", default="auto", choices=SAMPLERS, help="auto picks few-step for distilled checkpoints")
    ap.add_argument(
        "--solver",
        default="auto",
        choices=SOLVERS,
        help="unipc/euler: diffusers' UniPC/flow-match Euler scheduler (plain schedules 0-0-N); pyramid: pyrflow's "
        "samplers; auto: the model folder's scheduler (Wan's UniPC) for plain schedules, else pyramid",
    )
    ap.add_argument(
        "--guidance-scale",
        dest="guidance_scale",
        type=float,
        default=None,
        help="CFG scale (default: the checkpoint card's, 5.0 for Wan; none for distilled checkpoints)",
    )
    ap.add_argument(
        "--shift",
        type=float,
        default=None,
        help=f"timestep shift (default: scheduler config's for unipc/euler; card's or {PYRAMID_SHIFT} for pyramid)",
    )
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    ap.add_argument("--frames", type=int, default=None, help=f"pixel frames, 4k+1 (default: the card's, {WAN_SIZE[0]})")
    ap.add_argument("--height", type=int, default=None, help=f"pixels, a multiple of 16 (default: card, {WAN_SIZE[1]})")
    ap.add_argument("--width", type=int, default=None, help=f"pixels, a multiple of 16 (default: card, {WAN_SIZE[2]})")
    ap.add_argument(
        "--resampler", default=None, choices=TRANSITION_FAMILIES, help="override the checkpoint's resampler family"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the models run")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=_DTYPE_CHOICES,
        help="transformer weights and autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    ap.add_argument("--text-encoder-dtype", default="auto", choices=_DTYPE_CHOICES, help="auto: as --dtype")
    ap.add_argument("--t5-cpu", action="store_true", help="run the text encoder on the CPU (as Wan's --t5_cpu)")
    ap.add_argument(
        "--offload",
        action="store_true",
        help="keep every component on the CPU and move each to --device only while it runs (Wan's --offload_model)",
    )
    ap.add_argument(
        "--vae-tiling", action="store_true", help="decode in overlapping tiles (diffusers' AutoencoderKLWan tiling)"
    )
    ap.add_argument("--vae-dtype", default="float32", choices=tuple(DTYPES), help="VAE weights dtype")
    ap.add_argument("--attention", default="auto", choices=BACKENDS, help="attention backend")
    ap.add_argument("--compile", action="store_true", help="torch.compile each stage (CUDA graphs on a GPU)")
    ap.add_argument(
        "--context-parallel",
        choices=CONTEXT_PARALLEL,
        default=None,
        help="split the large stages' tokens over the ranks of torchrun --nproc-per-node N -m pyrflow_fast.sample",
    )
    ap.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="with --context-parallel: the CFG branches on two halves of the ranks",
    )
    ap.add_argument(
        "--min-split-tokens",
        type=int,
        default=None,
        help="with --context-parallel: forwards with fewer video tokens per sample run replicated (default: "
        "pyrflow_fast.parallel.DEFAULT_MIN_TOKENS; 0 splits every forward it can)",
    )
    ap.add_argument(
        "--shard-blocks",
        action="store_true",
        help="with --context-parallel: shard the transformer's blocks over the ranks with FSDP2, read shard by "
        "shard, so each rank stores 1/N of their weights (the 14B on GPUs that cannot hold it whole)",
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/sample.mp4"), help=".mp4 or .gif")
    ap.add_argument("--save-latents", type=Path, default=None, help="also write the final latents (.safetensors)")
    ap.add_argument("--fps", type=int, default=16, help="frame rate of the written video")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def run_cli(ap: argparse.ArgumentParser, argv: list[str] | None, work: Callable[[argparse.Namespace], str]) -> int:
    """Run a generating CLI: ``work(args)`` returns the summary for stderr; bad input (ValueError,
    FileNotFoundError: a size, schedule or model directory) becomes a usage error, not a traceback. A process
    group ``work`` joins (under ``torchrun``) is left at the end."""
    args = ap.parse_args(argv)
    joined = torch.distributed.is_initialized()  # a caller's process group stays the caller's
    done = False
    try:
        summary = work(args)
        done = True
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    finally:  # under torchrun: leave the group ``work`` joined (after a barrier when every rank got here)
        if not joined:
            leave(wait=done)
    print(summary, file=sys.stderr)
    return 0


def _with_sharded_transformer(
    components: WanComponents, model_dir: Path, device: torch.device, dtype: torch.dtype
) -> WanComponents:
    """``components`` (loaded without a transformer) with ``model_dir``'s transformer read shard by shard, its
    blocks sharded over torchrun's ranks (:func:`~pyrflow_fast.parallel.wan.load_sharded_wan`): no rank ever
    holds all of it."""
    from .parallel import join, load_sharded_wan

    join()
    dit = load_sharded_wan(model_dir, device=device, dtype=dtype, text_len=components.text_len)
    if (dit.config.text_dim, dit.config.in_dim) != (components.text_dim, components.z_dim):
        raise ValueError(
            f"{model_dir}: components do not fit together: transformer (text_dim, in_dim) "
            f"{(dit.config.text_dim, dit.config.in_dim)} != (text encoder width, VAE z_dim) "
            f"{(components.text_dim, components.z_dim)}"
        )
    return replace(components, transformer=dit, text_len=min(components.text_len, dit.config.text_len))


def _sample(args: argparse.Namespace) -> str:
    device = check_device(args.device)
    if args.context_parallel is not None and device.type == "cuda":  # one GPU per torchrun rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    auto = "bfloat16" if device.type == "cuda" else "float32"
    dtype = DTYPES[auto if args.dtype == "auto" else args.dtype]
    text_dtype = dtype if args.text_encoder_dtype == "auto" else DTYPES[args.text_encoder_dtype]
    check_output(args.out, (".mp4", ".gif"), "--out")
    if args.save_latents is not None:
        check_output(args.save_latents, (".safetensors",), "--save-latents")
    if args.fps < 1:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    if args.offload and args.t5_cpu:
        raise ValueError(
            "--offload and --t5-cpu: pick one (--offload keeps the text encoder on the CPU but while it runs)"
        )
    if args.shard_blocks and args.offload:
        raise ValueError(
            "--offload and --shard-blocks: pick one (--offload moves the whole transformer to --device while it "
            "runs; --shard-blocks spreads its blocks over torchrun's ranks)"
        )
    if args.offload and args.context_parallel is not None:
        raise ValueError("--offload runs on one process: it does not combine with --context-parallel")
    if args.min_split_tokens is not None and args.min_split_tokens < 0:
        raise ValueError(f"--min-split-tokens must be >= 0, got {args.min_split_tokens}")
    if (args.shard_blocks or args.min_split_tokens is not None) and args.context_parallel is None:
        flag = "--shard-blocks" if args.shard_blocks else "--min-split-tokens"
        raise ValueError(f"{flag} acts on the ranks that split the tokens: add --context-parallel ulysses or ring")
    if args.shard_blocks and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ValueError(
            "--shard-blocks spreads the transformer's blocks over torchrun's ranks, but this is a single process: "
            "run torchrun --nproc-per-node N -m pyrflow_fast.sample ... with N > 1"
        )
    options = Options.pick(vars(args))
    prompts = check_prompts(args.prompts, None)
    card = ModelCard.load(args.model_dir)
    scheduler_config = read_scheduler_config(args.model_dir)
    # every choice is checked against the card and the configuration files before anything loads
    request = prepare(card, read_geometry(args.model_dir), options, scheduler_config=scheduler_config)
    options = replace(options, seed=request.seed, schedule=request.plan)
    components = load_components(
        args.model_dir, device="cpu" if args.offload else device, dtype=dtype, text_encoder_dtype=text_dtype,
        vae_dtype=DTYPES[args.vae_dtype], text_encoder_device="cpu" if args.t5_cpu else None,
        transformer=not args.shard_blocks,
    )  # fmt: skip
    if args.shard_blocks:
        components = _with_sharded_transformer(components, args.model_dir, device, dtype)
    if args.vae_tiling:
        if not hasattr(components.vae, "enable_tiling"):
            kind = type(components.vae).__name__
            raise ValueError(f"--vae-tiling: the VAE of {args.model_dir} ({kind}) has no tiling")
        components.vae.enable_tiling()
    ppf = load_ppf(args.model_dir, components.transformer, card) if card.ppf_patches else None
    lora = load_card_lora(args.model_dir, components.transformer, card)
    result = generate(
        components, prompts, card=card, compile=args.compile, progress=not args.no_progress, ppf=ppf, lora=lora,
        context_parallel=args.context_parallel, cfg_parallel=args.cfg_parallel, min_split_tokens=args.min_split_tokens,
        shard_blocks=args.shard_blocks, offload=args.offload, device=device, **vars(options),
    )  # fmt: skip
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    written = save(result, args.out, fps=args.fps, latents=args.save_latents) if rank0 else []
    frames, height, width = result.info["size"]
    method = result.sampler if result.solver == "pyramid" else result.solver
    return (
        f"{method} {result.schedule} ({frames}x{height}x{width}, seed {result.seed}, {dtype}): "
        f"{result.seconds:.2f} s sampling; wrote {', '.join(map(str, written))}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, _sample)


if __name__ == "__main__":
    raise SystemExit(main())
