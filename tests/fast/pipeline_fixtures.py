"""Tiny random Wan2.1 components, written as model directories in both release layouts.

``write_tiny_wan_dir(path, layout)`` writes a complete directory that
:func:`pyrflow_fast.pipeline.load_components` loads: a word-level tokenizer (built locally, no
download), a 2-layer umT5 encoder (width 16), a 4-stage ``AutoencoderKLWan`` of base width 4 and a
2-layer :class:`pyrflow_fast.wan.WanDiT` whose ``text_dim`` is the encoder width and whose
``in_dim``/``out_dim`` are the VAE ``z_dim``. Every parameter is random (norm gains around 1), and
the same ``seed`` gives the same weights in both layouts, so loading either gives bit-identical
models.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from pyrflow_fast.pipeline import write_original_text_encoder, write_original_vae
from pyrflow_fast.pipeline.layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE
from pyrflow_fast.pipeline.tokenizer import word_tokenizer
from pyrflow_fast.pipeline.vae_keys import WAN_LATENTS_MEAN, WAN_LATENTS_STD
from pyrflow_fast.wan import WanConfig, WanDiT
from pyrflow_fast.wan.checkpoint import save_wan

__all__ = ["TINY_WORDS", "TINY_TEXT_DIM", "tiny_tokenizer", "tiny_components", "write_tiny_wan_dir"]

#: The tiny tokenizer's vocabulary (lower-cased words split on whitespace and punctuation).
TINY_WORDS = (
    "a an the of in on at with and to is are cat dog bird fish horse man woman child car boat "
    "red blue green white black small big old young running walking flying sitting jumping "
    "park street beach sky water snow forest city night day sunset video camera slow motion , ."
).split()
TINY_TEXT_DIM = 16


def tiny_tokenizer():
    """A word-level fast tokenizer over :data:`TINY_WORDS` with umT5's special ids (pad 0, eos 1, unk 2)."""
    return word_tokenizer(TINY_WORDS)


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma") or "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "shared" in name or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)


def tiny_components(seed: int = 0, z_dim: int = 16) -> SimpleNamespace:
    """In-memory tiny ``tokenizer``, ``text_encoder``, ``vae`` and ``transformer`` (eval mode)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    gen = torch.Generator().manual_seed(seed)
    tokenizer = tiny_tokenizer()
    t5_config = UMT5Config(
        vocab_size=64,
        d_model=TINY_TEXT_DIM,
        d_kv=4,
        num_heads=4,
        d_ff=32,
        num_layers=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
    )
    assert len(tokenizer) <= t5_config.vocab_size
    text_encoder = UMT5EncoderModel(t5_config)
    _randomize(text_encoder, gen)
    if z_dim == len(WAN_LATENTS_MEAN):
        mean, std = list(WAN_LATENTS_MEAN), list(WAN_LATENTS_STD)
    else:
        mean = [round(-0.5 + i / z_dim, 4) for i in range(z_dim)]
        std = [round(0.5 + 2 * i / z_dim, 4) for i in range(z_dim)]
    vae = AutoencoderKLWan(
        base_dim=4, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=mean, latents_std=std
    )
    _randomize(vae, gen)
    cfg = WanConfig(
        dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=2, in_dim=z_dim, out_dim=z_dim,
        text_dim=TINY_TEXT_DIM, text_len=512,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformer = WanDiT(cfg)
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return SimpleNamespace(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
    )


def write_tiny_wan_dir(path: str | Path, layout: str = "diffusers", seed: int = 0, z_dim: int = 16) -> Path:
    """Write a complete tiny Wan2.1 model directory at ``path`` in ``layout`` and return ``path``.

    ``"diffusers"``: ``model_index.json``, ``tokenizer/``, ``text_encoder/``, ``vae/``,
    ``transformer/``. ``"original"``: ``Wan2.1_VAE.pth`` (plus the ``Wan2.1_VAE.config.json``
    sidecar when ``z_dim != 16``), ``models_t5_umt5-xxl-enc-bf16.pth`` (kept float32 so both
    layouts are bit-identical), ``google/umt5-xxl/``, ``config.json`` and
    ``diffusion_pytorch_model.safetensors``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = tiny_components(seed, z_dim)
    if layout == "diffusers":
        import diffusers

        c.tokenizer.save_pretrained(path / "tokenizer")
        c.text_encoder.save_pretrained(path / "text_encoder")
        c.vae.save_pretrained(path / "vae")
        save_wan(c.transformer, path, layout="diffusers")
        index = {
            "_class_name": "WanPipeline",
            "_diffusers_version": diffusers.__version__,
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],  # the word-level tokenizer, no T5 one
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
        }
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    elif layout == "original":
        write_original_vae(c.vae, path / ORIGINAL_VAE)
        write_original_text_encoder(c.text_encoder, path / ORIGINAL_T5)
        c.tokenizer.save_pretrained(path / ORIGINAL_TOKENIZER)
        save_wan(c.transformer, path, layout="original")
    else:
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    return path
