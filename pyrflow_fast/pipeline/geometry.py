"""What sizes a model directory accepts, read from its configuration files before any weights load.

A model's geometry is the VAE stride ``(frames, height, width)`` (Wan2.1: ``(4, 8, 8)``; pixel
space: ``(1, 1, 1)``) and the transformer's patch ``(T, H, W)`` (Wan2.1: ``(1, 2, 2)``).
:func:`read_geometry` gets it from ``vae/config.json`` and ``transformer/config.json`` (diffusers
layout) or from ``config.json`` and the optional ``Wan2.1_VAE.config.json`` sidecar (original
layout, whose VAE otherwise is Wan's), so that ``pyrflow-sample`` can reject a size before it spends
minutes loading; :meth:`Geometry.of` reads the same numbers off loaded components.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wan.checkpoint import read_config
from .layout import ORIGINAL_VAE_CONFIG, find_layout
from .pixel import is_pixel_space

__all__ = ["Geometry", "read_geometry", "read_scheduler_config", "SCHEDULER_CONFIG"]

SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
"""Where a diffusers model folder keeps its scheduler (``WanPipeline.save_pretrained`` writes it)."""

# AutoencoderKLWan's defaults: Wan2.1's VAE
_DIM_MULT = (1, 2, 4, 4)
_TEMPORAL_DOWNSAMPLE = (False, True, True)


@dataclass(frozen=True)
class Geometry:
    """VAE ``stride`` ``(F, H, W)`` and transformer ``patch`` ``(T, H, W)`` of a model directory."""

    stride: tuple[int, int, int]
    patch: tuple[int, int, int]

    @classmethod
    def of(cls, components: Any) -> Geometry:
        """The geometry of loaded :class:`~pyrflow_fast.pipeline.WanComponents` (patch 1 without a transformer)."""
        dit = components.transformer
        return cls(tuple(components.stride), tuple(dit.config.patch_size) if dit is not None else (1, 1, 1))


def _vae_stride(config: dict[str, Any]) -> tuple[int, int, int]:
    spatial = 2 ** (len(config.get("dim_mult", _DIM_MULT)) - 1)
    return (2 ** sum(bool(t) for t in config.get("temperal_downsample", _TEMPORAL_DOWNSAMPLE)), spatial, spatial)


def read_geometry(model_dir: str | Path) -> Geometry:
    """The :class:`Geometry` of ``model_dir`` from its JSON files alone (no weights are read).

    :raises MissingFilesError: (a ``FileNotFoundError``) when the directory is incomplete.
    """
    root = Path(model_dir)
    layout = find_layout(root)
    if layout == "diffusers":
        vae = root / "vae"
        stride = (1, 1, 1) if is_pixel_space(vae) else _vae_stride(json.loads((vae / "config.json").read_text()))
    else:
        sidecar = root / ORIGINAL_VAE_CONFIG
        stride = _vae_stride(json.loads(sidecar.read_text()) if sidecar.is_file() else {})
    config = read_config(root)
    return Geometry(stride, tuple(config.patch_size) if config is not None else (1, 2, 2))


def read_scheduler_config(model_dir: str | Path) -> dict[str, Any] | None:
    """The diffusers scheduler config of ``model_dir`` (``scheduler/scheduler_config.json``), or ``None``."""
    path = Path(model_dir) / SCHEDULER_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or "_class_name" not in config:
        raise ValueError(f"{path} is not a diffusers scheduler config (no _class_name)")
    return config
