r"""``PyramidalWanPipeline``: pyrflow's sampler behind diffusers' ``DiffusionPipeline`` interface.

It loads a stock Wan2.1 folder (diffusers or original layout) or any pyrflow export with
:func:`~pyrflow_fast.pipeline.load_components` plus the folder's card, PPF layers and LoRA, and its
``__call__`` takes ``WanPipeline``'s arguments (``prompt``, ``negative_prompt``, ``height``,
``width``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``, ``num_videos_per_prompt``,
``generator``, ``latents``, ``prompt_embeds``, ``negative_prompt_embeds``, ``output_type``,
``return_dict``) plus pyrflow's (``schedule``, ``resampler``, ``sampler``, ``solver``, ``shift``),
runs :func:`pyrflow_fast.sample.generate` and post-processes the video with diffusers'
``VideoProcessor``, as ``WanPipeline`` does::

    pipe = PyramidalWanPipeline.from_pretrained("runs/wan-pyramidal/export", torch_dtype=torch.bfloat16)
    frames = pipe("a red car", num_frames=81, height=480, width=832, schedule="20-20-10").frames[0]

How ``WanPipeline``'s arguments map onto pyrflow's: ``guidance_scale`` is ``guidance_scale`` (``None``: the
card's); ``num_inference_steps`` without ``schedule`` is a plain schedule of that many steps at full
resolution (``0-...-0-N``), without either the card's schedule runs; ``generator`` gives the seed
(``generator.initial_seed()``: pyrflow draws its noise from a generator it seeds on the transformer's
device, so a generator's state is not consumed); ``latents`` is the starting noise
(:func:`~pyrflow_fast.sample.generate`'s ``latents``). The components are registered as diffusers
modules (``tokenizer``, ``text_encoder``, ``vae``, ``scheduler``, ``transformer`` -- pyrflow's
:class:`~pyrflow_fast.wan.WanDiT`), so ``.to(device)`` moves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.video_processor import VideoProcessor

from ..card import ModelCard, load_ppf
from ..request import Options
from .components import WanComponents, load_components

__all__ = ["PyramidalWanPipeline"]


_PASSED = (
    "progress", "latents", "prompt_embeds", "negative_prompt_embeds", "context_parallel", "cfg_parallel",
    "min_split_tokens", "shard_blocks", "offload", "device",
)  # fmt: skip
"""The arguments of :meth:`PyramidalWanPipeline.__call__` besides the request's
:class:`~pyrflow_fast.request.Options` that :func:`~pyrflow_fast.sample.generate` takes under the same name."""


class PyramidalWanPipeline(DiffusionPipeline):
    """Text-to-video with pyrflow's pyramidal (or plain) samplers through diffusers' pipeline interface.

    :param tokenizer: umT5's tokenizer.
    :param text_encoder: a ``transformers.UMT5EncoderModel``.
    :param vae: a ``diffusers.AutoencoderKLWan``.
    :param scheduler: the folder's diffusers scheduler (used by ``solver="unipc"``/``"euler"`` on plain
        schedules; pyrflow's pyramidal samplers use their own grids).
    :param transformer: a :class:`~pyrflow_fast.wan.WanDiT`.
    :param card: the checkpoint's :class:`~pyrflow_fast.card.ModelCard` (default: a plain Wan checkpoint).
    :param ppf: a PPF checkpoint's model (:func:`~pyrflow_fast.card.load_ppf`), else ``None``.
    :param lora: the card's LoRA (:func:`~pyrflow_fast.train.lora.load_card_lora`), acting on ``transformer``.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, tokenizer, text_encoder, vae, scheduler, transformer, card=None, ppf=None, lora=None):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
        )
        self.card = card if card is not None else ModelCard()
        self.ppf = ppf
        self.lora = lora
        self.video_processor = VideoProcessor(vae_scale_factor=8)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        text_len: int = 512,
        **kwargs: Any,
    ) -> PyramidalWanPipeline:
        """Load a local Wan2.1 folder (either layout) or pyrflow export: components, card, PPF layers and the
        card's LoRA. ``torch_dtype`` and ``device`` as in :func:`~pyrflow_fast.pipeline.load_components`;
        TypeError for diffusers' other loading options, which do not apply to a local folder."""
        if kwargs:
            raise TypeError(
                f"PyramidalWanPipeline.from_pretrained reads a local folder; unsupported options {sorted(kwargs)}"
            )
        import diffusers

        from ..scheduler import load_scheduler_config
        from ..train.lora import load_card_lora

        root = Path(pretrained_model_name_or_path)
        card = ModelCard.load(root)
        components = load_components(root, device=device, dtype=torch_dtype, text_len=text_len)
        config = dict(components.scheduler_config or load_scheduler_config(root))
        scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)
        ppf = load_ppf(root, components.transformer, card) if card.ppf_patches else None
        lora = load_card_lora(root, components.transformer, card)
        pipe = cls(
            components.tokenizer, components.text_encoder, components.vae, scheduler, components.transformer,
            card=card, ppf=ppf, lora=lora,
        )  # fmt: skip
        pipe.text_len = components.text_len
        return pipe

    def components_for_pyrflow(self) -> WanComponents:
        """The pipeline's modules as :func:`~pyrflow_fast.sample.generate`'s components."""
        return WanComponents(
            self.tokenizer,
            self.text_encoder,
            self.vae,
            self.transformer,
            "diffusers",
            getattr(self, "text_len", 512),
            {**self.scheduler.config, "_class_name": type(self.scheduler).__name__},
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        *,
        schedule: str | None = None,
        resampler: str | None = None,
        sampler: str = "auto",
        solver: str = "auto",
        shift: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        context_parallel: str | None = None,
        cfg_parallel: bool = False,
        min_split_tokens: int | None = None,
        shard_blocks: bool = False,
        attention: str = "auto",
        offload: bool = False,
        device: torch.device | str | None = None,
    ) -> WanPipelineOutput | tuple:
        """Generate videos; ``frames`` as ``WanPipeline`` returns them for ``output_type`` (``np``: ``(B, F, H, W, 3)``
        in ``[0, 1]``; ``pt``: ``(B, F, 3, H, W)``; ``pil``: lists of images; ``latent``: the normalised
        latents ``(B, C, F', H', W')``). ``seed`` overrides ``generator``; ``context_parallel``, ``cfg_parallel`` and
        ``min_split_tokens`` split the sampling over torchrun's ranks, ``shard_blocks`` shards the transformer's
        blocks over them (in place, on the first call), ``attention`` picks the attention backend and
        ``offload`` keeps each component on the CPU but while it runs on ``device``, as in
        :func:`~pyrflow_fast.sample.generate`."""
        from ..sample import generate

        if isinstance(generator, list):
            raise ValueError("pass one torch.Generator (pyrflow seeds one generator for the whole batch)")
        if seed is None and generator is not None:
            seed = generator.initial_seed()
        if schedule is None and num_inference_steps is not None:
            schedule = "-".join(["0"] * (self.card.num_stages - 1) + [str(int(num_inference_steps))])
        prompts = prompt
        if num_videos_per_prompt != 1:
            if prompt_embeds is not None:
                prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, 0)
                if negative_prompt_embeds is not None:
                    negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, 0)
            if prompts is not None:
                listed = [prompts] if isinstance(prompts, str) else prompts
                prompts = [p for p in listed for _ in range(num_videos_per_prompt)]
        arguments = {**locals(), "frames": num_frames}
        options = vars(Options.pick(arguments))
        result = generate(
            self.components_for_pyrflow(), prompts, card=self.card, ppf=self.ppf, lora=self.lora, **options,
            **{name: arguments[name] for name in _PASSED},
        )  # fmt: skip
        frames = (
            result.latents
            if output_type == "latent"
            else self.video_processor.postprocess_video(result.video, output_type=output_type)
        )
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=frames) if return_dict else (frames,)
