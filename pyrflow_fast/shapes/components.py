r"""The frozen parts of the shapes model: word tokenizer, a small umT5 text encoder, pixel space.

The text encoder is a 2-layer ``UMT5EncoderModel`` of width 32 with transformers' own random
initialisation under a fixed seed, never trained: like Wan's frozen umT5 it maps each prompt to a
fixed sequence of token embeddings, and the backbone learns to read them. The "VAE" is
:class:`~pyrflow_fast.pipeline.pixel.PixelSpace` normalised with the per-channel pixel statistics
of the training split. :func:`write_components` writes them as a diffusers-layout model directory
without a transformer, which ``pyrflow-cache`` loads to build the training cache.

The vocabulary is closed, so the encoder's output for every prompt (:func:`all_prompts`) is shipped
as a table beside the checkpoints (:data:`EMBEDDINGS_FILE`, keyed by :func:`encoder_digest`):
``python -m pyrflow_fast.shapes`` then neither loads the encoder nor imports ``transformers``
(:func:`load_embeddings`). Rewrite it when the text encoder or tokenizer changes:
``python -m pyrflow_fast.shapes.components --write-embeddings`` (:func:`write_embeddings`).

>>> words = vocabulary()
>>> "triangle" in words and "cameraman" in words
True
>>> len(all_prompts()), all_prompts()[0]
(480, 'a red square moving left over astronaut')
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..pipeline.pixel import PixelSpace
from ..pipeline.tokenizer import word_tokenizer
from . import SHIPPED
from .data import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, draw, prompt, render

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDINGS_FILE",
    "TEXT_DIM",
    "TEXT_LEN",
    "all_prompts",
    "encoder_digest",
    "load_embeddings",
    "pixel_stats",
    "table_error",
    "vocabulary",
    "write_components",
    "write_embeddings",
]

TEXT_DIM = 32
TEXT_LEN = 16
_TEXT_SEED = 20261126
#: The prompt-embedding table, in the folder that holds the model directories (``models/``).
EMBEDDINGS_FILE = "prompt_embeddings.safetensors"
WRITE_EMBEDDINGS = "python -m pyrflow_fast.shapes.components --write-embeddings"
_ENCODER_FOLDERS = ("tokenizer", "text_encoder")


def vocabulary() -> list[str]:
    """Every word of the shapes prompts."""
    return ["a", "moving", "over", *COLORS, *SHAPES, *DIRECTIONS, *BACKGROUNDS]


def all_prompts() -> list[str]:
    """Every prompt the shapes models know: colour x shape x direction x background, in that order."""
    return [prompt(c, s, d, b) for c in COLORS for s in SHAPES for d in DIRECTIONS for b in BACKGROUNDS]


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


# ---------------------------------------------------------------------- prompt embeddings
def encoder_digest(model_dir: str | Path) -> str:
    """SHA-256 (hex) of every file under ``model_dir``'s ``tokenizer/`` and ``text_encoder/``, names included:
    what the prompt embeddings depend on."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for folder in _ENCODER_FOLDERS:
        files = sorted(p for p in (root / folder).rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{root / folder} holds no files: not a shapes model directory")
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_embeddings(model_dir: str | Path, path: str | Path | None = None) -> Path:
    """Encode every prompt of :func:`all_prompts` with ``model_dir``'s text encoder and write the table.

    One prompt per call, as ``python -m pyrflow_fast.shapes`` encodes. The file holds ``embeddings``
    ``(N, L, TEXT_DIM)`` float32: the rows of :meth:`~pyrflow_fast.pipeline.WanComponents.encode_prompt`
    up to the longest prompt's ``L`` tokens (the rest are zeros); its metadata holds the prompts, the
    ``text_len``, and :func:`encoder_digest`. ``path`` defaults to :data:`EMBEDDINGS_FILE` beside ``model_dir``.
    """
    import safetensors.torch
    import torch
    import transformers

    from ..pipeline import load_components

    root = Path(model_dir)
    path = root.parent / EMBEDDINGS_FILE if path is None else Path(path)
    components = load_components(root, transformer=False, text_len=TEXT_LEN)
    texts = all_prompts()
    full = torch.cat([components.encode_prompt([t]) for t in texts])  # (N, TEXT_LEN, TEXT_DIM)
    used = full.ne(0).any(dim=2).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 0
    metadata = {
        "prompts": json.dumps(texts),
        "text_len": str(components.text_len),
        "encoder_sha256": encoder_digest(root),
        "written_by": f"{WRITE_EMBEDDINGS} (torch {torch.__version__}, transformers {transformers.__version__})",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"embeddings": full[:, :length].contiguous()}, str(path), metadata=metadata)
    return path


def load_embeddings(model_dir: str | Path, path: str | Path | None = None) -> dict[str, torch.Tensor] | None:
    """The table of :func:`write_embeddings` for ``model_dir`` as
    :attr:`~pyrflow_fast.pipeline.WanComponents.prompt_embeddings` (``{prompt: (text_len, TEXT_DIM)}``).

    ``None`` when there is no table at ``path`` (default: :data:`EMBEDDINGS_FILE` beside ``model_dir``);
    ``None`` with a warning naming the fix when it was made with another tokenizer or text encoder (the
    caller then encodes with the encoder).
    """
    import torch

    from ..wan.checkpoint import read_safetensors, safetensors_metadata

    root = Path(model_dir)
    path = root.parent / EMBEDDINGS_FILE if path is None else Path(path)
    if not path.is_file():
        return None
    meta = safetensors_metadata(path)
    if meta.get("encoder_sha256") != encoder_digest(root):
        warnings.warn(
            f"{path} was computed with another tokenizer or text encoder than {root}'s; encoding with the text "
            f"encoder instead (seconds slower). Rewrite it with {WRITE_EMBEDDINGS} --model-dir {root}",
            stacklevel=2,
        )
        return None
    embeddings = read_safetensors(path)["embeddings"]
    texts = json.loads(meta["prompts"])
    full = torch.zeros(len(texts), int(meta["text_len"]), embeddings.shape[2])
    full[:, : embeddings.shape[1]] = embeddings
    return dict(zip(texts, full.unbind(0), strict=True))


def table_error(model_dir: str | Path, path: str | Path | None = None) -> float:
    """Largest ``|table - encoder|`` over every prompt, relative to the table's largest entry: 0 on the CPU that
    wrote the table, float32 rounding on another (its kernels round differently)."""
    import torch

    from ..pipeline import load_components

    table = load_embeddings(model_dir, path)
    if table is None:
        raise ValueError(f"no valid prompt-embedding table for {model_dir}; write it with {WRITE_EMBEDDINGS}")
    components = load_components(model_dir, transformer=False, text_len=TEXT_LEN)
    err = max(float((components.encode_prompt([t])[0] - e).abs().max()) for t, e in table.items())
    return err / float(torch.stack(list(table.values())).abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pyrflow_fast.shapes.components",
        description="Write the prompt-embedding table of the shapes models (after a change of text encoder), "
        "or compare it with the text encoder on this machine.",
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-embeddings", action="store_true", help="write the table")
    mode.add_argument("--compare", action="store_true", help="print the table's largest relative error")
    ap.add_argument("--model-dir", type=Path, default=SHIPPED / "distilled", help="the model whose text encoder to run")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {EMBEDDINGS_FILE} beside --model-dir")
    args = ap.parse_args(argv)
    if args.compare:
        print(f"largest |table - encoder| / largest entry: {table_error(args.model_dir, args.out):.3g}")
    else:
        print(write_embeddings(args.model_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
