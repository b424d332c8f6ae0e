"""Where the Wan2.1 components live in a local model directory, in either release layout.

**diffusers layout** (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``)::

    model_index.json                  (optional)
    text_encoder/config.json          UMT5EncoderModel config
    text_encoder/model.safetensors    or model.safetensors.index.json + shards
    tokenizer/                        tokenizer.json (or spiece.model) + tokenizer_config.json
    vae/config.json                   AutoencoderKLWan config
    vae/diffusion_pytorch_model.safetensors   (or .index.json + shards; none for pixel space,
                                      whose vae/config.json names PixelSpace: pyrflow_fast.pipeline.pixel)
    transformer/config.json + diffusion_pytorch_model*.safetensors

**original layout** (e.g. ``Wan-AI/Wan2.1-T2V-1.3B``)::

    Wan2.1_VAE.pth                    Wan VAE state dict (wan/modules/vae.py names)
    Wan2.1_VAE.config.json            (optional, ours) AutoencoderKLWan config overrides
    models_t5_umt5-xxl-enc-bf16.pth   Wan T5 encoder state dict (wan/modules/t5.py names)
    google/umt5-xxl/                  tokenizer folder
    config.json + diffusion_pytorch_model.safetensors   (or .index.json + shards)

:func:`find_layout` decides which one a directory holds; a directory that holds neither
completely raises :class:`MissingFilesError` (a ``FileNotFoundError``) listing what is missing.
"""

from __future__ import annotations

from pathlib import Path

from .pixel import is_pixel_space

__all__ = [
    "MissingFilesError",
    "find_layout",
    "missing_files",
    "LAYOUTS",
    "ORIGINAL_VAE",
    "ORIGINAL_VAE_CONFIG",
    "ORIGINAL_T5",
    "ORIGINAL_TOKENIZER",
]

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_VAE_CONFIG = "Wan2.1_VAE.config.json"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"

_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_DIFF_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

#: Human-readable description of both layouts (used in error messages).
LAYOUTS = (
    "expected one of two layouts:\n"
    "  diffusers: [model_index.json], text_encoder/{config.json, model.safetensors[.index.json]}, "
    "tokenizer/{tokenizer.json or spiece.model, tokenizer_config.json}, "
    "vae/{config.json, diffusion_pytorch_model.safetensors[.index.json]}, "
    "transformer/{config.json, diffusion_pytorch_model.safetensors[.index.json]}\n"
    f"  original:  {ORIGINAL_VAE}, {ORIGINAL_T5}, {ORIGINAL_TOKENIZER}/ (tokenizer.json or spiece.model), "
    "config.json, diffusion_pytorch_model.safetensors[.index.json]"
)


class MissingFilesError(FileNotFoundError):
    """A model directory lacks files; the message lists them and both expected layouts."""


def _any_file(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() for n in names)


def missing_files(model_dir: str | Path, layout: str, *, transformer: bool = True) -> list[str]:
    """Paths (relative to ``model_dir``) that ``layout`` needs and the directory lacks."""
    root = Path(model_dir)
    need: list[tuple[str, bool]] = []
    if layout == "diffusers":
        need += [
            ("text_encoder/config.json", (root / "text_encoder/config.json").is_file()),
            ("text_encoder/model.safetensors[.index.json]", _any_file(root / "text_encoder", _HF_WEIGHTS)),
            ("tokenizer/ (tokenizer.json or spiece.model)", _any_file(root / "tokenizer", _TOKENIZER_FILES)),
            ("vae/config.json", (root / "vae/config.json").is_file()),
            (
                "vae/diffusion_pytorch_model.safetensors[.index.json]",
                _any_file(root / "vae", _DIFF_WEIGHTS) or is_pixel_space(root / "vae"),
            ),
        ]
        if transformer:
            need += [
                ("transformer/config.json", (root / "transformer/config.json").is_file()),
                (
                    "transformer/diffusion_pytorch_model.safetensors[.index.json]",
                    _any_file(root / "transformer", _DIFF_WEIGHTS),
                ),
            ]
    elif layout == "original":
        need += [
            (ORIGINAL_VAE, (root / ORIGINAL_VAE).is_file()),
            (ORIGINAL_T5, (root / ORIGINAL_T5).is_file()),
            (
                f"{ORIGINAL_TOKENIZER}/ (tokenizer.json or spiece.model)",
                _any_file(root / ORIGINAL_TOKENIZER, _TOKENIZER_FILES),
            ),
        ]
        if transformer:
            need += [
                ("config.json", (root / "config.json").is_file()),
                ("diffusion_pytorch_model.safetensors[.index.json]", _any_file(root, _DIFF_WEIGHTS)),
            ]
    else:
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    return [name for name, ok in need if not ok]


def find_layout(model_dir: str | Path, *, transformer: bool = True) -> str:
    """Return ``"diffusers"`` or ``"original"``: the layout whose files ``model_dir`` holds.

    A directory complete in both layouts is reported as ``"diffusers"``.

    :param transformer: whether the transformer weights are required too.
    :raises MissingFilesError: (a :class:`FileNotFoundError`) when the directory does not exist or
        is complete in neither layout; the message lists the missing files of the layout the
        directory resembles most (or of both) and describes both layouts.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise MissingFilesError(f"model directory {root} does not exist or is not a directory;\n{LAYOUTS}")
    missing = {layout: missing_files(root, layout, transformer=transformer) for layout in ("diffusers", "original")}
    for layout in ("diffusers", "original"):
        if not missing[layout]:
            return layout
    # Report the layout the directory resembles (its distinctive entries), else both.
    diffusers_like = any((root / d).exists() for d in ("model_index.json", "text_encoder", "vae", "tokenizer"))
    original_like = any((root / f).exists() for f in (ORIGINAL_VAE, ORIGINAL_T5, "google"))
    shown = [lay for lay, like in (("diffusers", diffusers_like), ("original", original_like)) if like]
    shown = shown or ["diffusers", "original"]
    lines = [f"  {lay} layout is missing: {', '.join(missing[lay])}" for lay in shown]
    raise MissingFilesError(f"{root} is not a complete Wan2.1 model directory:\n" + "\n".join(lines) + f"\n{LAYOUTS}")
