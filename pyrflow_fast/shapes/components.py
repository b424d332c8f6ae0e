r"""The frozen parts of the shapes model: word tokenizer, a small umT5 text encoder, pixel space.

The text encoder is a 2-layer ``UMT5EncoderModel`` of width 32 with transformers' own random
initialisation under a fixed seed, never trained: like Wan's frozen umT5 it maps each prompt to a
fixed sequence of token embeddings, and the backbone learns to read them. The "VAE" is
:class:`~pyrflow_fast.pipeline.pixel.PixelSpace` normalised with the per-channel pixel statistics
of the training split. :func:`write_components` writes them as a diffusers-layout model directory
without a transformer, which ``pyrflow-cache`` loads to build the training cache.

>>> words = vocabulary()
>>> "triangle" in words and "cameraman" in words
True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..pipeline.pixel import PixelSpace
from ..pipeline.tokenizer import word_tokenizer
from .data import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, draw, render

__all__ = ["TEXT_DIM", "TEXT_LEN", "pixel_stats", "vocabulary", "write_components"]

TEXT_DIM = 32
TEXT_LEN = 16
_TEXT_SEED = 20261126


def vocabulary() -> list[str]:
    """Every word of the shapes prompts."""
    return ["a", "moving", "over", *COLORS, *SHAPES, *DIRECTIONS, *BACKGROUNDS]


def pixel_stats(seed: int = 0, num: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the first ``num`` videos of split ``seed`` in [-1, 1]."""
    videos = np.stack([render(draw(seed, i)) for i in range(num)])
    mean = videos.mean(axis=(0, 2, 3, 4))
    std = videos.std(axis=(0, 2, 3, 4))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def write_components(folder: str | Path, *, seed: int = 0) -> Path:
    """Write tokenizer, text encoder and pixel space (stats of split ``seed``) to ``folder``."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(vocabulary(), model_max_length=TEXT_LEN)
    tokenizer.save_pretrained(folder / "tokenizer")
    config = UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    torch.manual_seed(_TEXT_SEED)
    UMT5EncoderModel(config).eval().save_pretrained(folder / "text_encoder")
    mean, std = pixel_stats(seed)
    PixelSpace(mean, std).save_pretrained(folder / "vae")
    index = {
        "_class_name": "WanPipeline",
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "vae": ["pyrflow_fast", "PixelSpace"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder
