r"""Pixel space in place of Wan's VAE: the latent of a video is the video, normalised per channel.

Small models trained here (:mod:`pyrflow_fast.shapes`) run the Wan backbone directly on RGB pixels:
``z = (video - mean) / std`` with per-channel statistics of the training data, stride ``(1, 1, 1)``
and ``z_dim = 3``. :class:`PixelSpace` offers the part of ``diffusers.AutoencoderKLWan``'s interface
that :class:`~pyrflow_fast.pipeline.WanComponents` uses (``config.z_dim``, ``config.dim_mult``,
``config.temperal_downsample``, ``config.latents_mean``/``latents_std``, ``encode(x).latent_dist.mode()``,
``decode(z).sample``), so encoding, decoding, caching and sampling work unchanged.

On disk (diffusers layout) it is ``vae/config.json`` with ``"_class_name": "PixelSpace"`` and no
weights:

>>> import json, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = PixelSpace(latents_mean=[0.0, 0.1, 0.2], latents_std=[0.5, 0.5, 0.5]).save_pretrained(folder)
>>> json.loads(path.read_text())["_class_name"]
'PixelSpace'
>>> v = torch.rand(1, 3, 5, 4, 4) * 2 - 1
>>> vae = PixelSpace.from_pretrained(folder)
>>> bool(torch.equal(vae.decode(vae.encode(v).latent_dist.mode()).sample, v))
True
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

__all__ = ["PIXEL_CLASS", "PixelSpace", "is_pixel_space"]

PIXEL_CLASS = "PixelSpace"
CONFIG_FILE = "config.json"


def is_pixel_space(folder: str | Path) -> bool:
    """Whether ``folder`` (a diffusers ``vae/`` folder) holds a :class:`PixelSpace` config."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("_class_name") == PIXEL_CLASS
    except (json.JSONDecodeError, AttributeError):
        return False


class PixelSpace(torch.nn.Module):
    """Identity autoencoder on RGB videos ``(B, 3, F, H, W)`` in ``[-1, 1]`` (see the module docstring).

    :param latents_mean: per-channel mean the pipeline subtracts after "encoding".
    :param latents_std: per-channel standard deviation it divides by.
    """

    def __init__(self, latents_mean: list[float], latents_std: list[float]) -> None:
        super().__init__()
        if len(latents_mean) != 3 or len(latents_std) != 3 or min(latents_std) <= 0:
            raise ValueError(f"pixel space needs 3 means and 3 positive stds, got {latents_mean}, {latents_std}")
        self.config = SimpleNamespace(
            _class_name=PIXEL_CLASS,
            z_dim=3,
            dim_mult=[1],
            temperal_downsample=[],
            latents_mean=[float(m) for m in latents_mean],
            latents_std=[float(s) for s in latents_std],
        )
        # WanComponents reads the device and dtype off the first parameter
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def encode(self, video: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: video))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_FILE
        path.write_text(json.dumps(vars(self.config), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PixelSpace:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
        if config.get("_class_name") != PIXEL_CLASS:
            raise ValueError(f"{folder}: not a {PIXEL_CLASS} config")
        return cls(config["latents_mean"], config["latents_std"])
