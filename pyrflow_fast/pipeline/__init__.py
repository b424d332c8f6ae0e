"""Wan2.1 pipeline components: umT5 text encoder + tokenizer, Wan VAE, transformer.

Usage::

    comps = load_components("Wan2.1-T2V-1.3B", device="cuda", dtype=torch.bfloat16)
    context = comps.encode_prompt(["a cat"])        # (1, 512, 4096) float32, zero beyond the prompt
    z = comps.encode_video(video)                   # (B, 16, (F-1)/4+1, H/8, W/8), normalised
    video = comps.decode_latents(z)                 # (B, 3, F, H, W) in [-1, 1]

See :mod:`~pyrflow_fast.pipeline.layout` for the two directory layouts,
:mod:`~pyrflow_fast.pipeline.components` for loading, and :mod:`~pyrflow_fast.pipeline.t5_keys` /
:mod:`~pyrflow_fast.pipeline.vae_keys` for the key mappings of the original Wan files.
"""

from .components import (
    WanComponents,
    check_device,
    clean_prompt,
    load_components,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    write_original_text_encoder,
    write_original_vae,
)
from .layout import MissingFilesError, find_layout, missing_files

__all__ = [
    "MissingFilesError",
    "WanComponents",
    "check_device",
    "clean_prompt",
    "find_layout",
    "load_components",
    "load_text_encoder",
    "load_tokenizer",
    "load_vae",
    "missing_files",
    "write_original_text_encoder",
    "write_original_vae",
]
