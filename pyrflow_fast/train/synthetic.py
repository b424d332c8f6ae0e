r"""An in-memory synthetic dataset of clean latent pyramids (tests and the evidence run).

Each video is a procedural natural-scale latent ``a0`` of shape ``(C, F, H, W)``: per text class a
fixed pair of moving plane waves (spatial frequency, direction, speed and a channel mix fixed by the
class), with a per-video random phase and amplitude and a little white noise, normalised to about
unit variance. The clean stage signals are Definition 1, ``x0^(i+1) = down(x0^(i))`` with
``x0^(0) = a0`` (orthonormal units), finest first. Each class has a fixed random text context.

Items follow the trainer's data contract (the same as :class:`pyrflow_fast.data.cache.LatentCache`):
``{"x0s": [S tensors (C, F_i, H_i, W_i)], "context": (L, D) float32, "context_len": int}``;
synthetic items also carry ``"label"`` (the class).

>>> from pyrflow_fast.resample import Pyramid
>>> ds = SyntheticPyramids(8, Pyramid.uniform("haar", (2, 2, 2), 3), channels=4, size=(5, 16, 16), text_dim=16)
>>> item = ds[0]
>>> [tuple(x.shape) for x in item["x0s"]], tuple(item["context"].shape), item["context_len"]
([(4, 5, 16, 16), (4, 3, 8, 8), (4, 2, 4, 4)], (4, 16), 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..process import clean_pyramid_latent
from ..resample import Pyramid

__all__ = ["SyntheticPyramids", "synthetic_latents"]


def _class_params(num_classes: int, channels: int, seed: int) -> list[dict]:
    """Per-class wave parameters (fixed by ``seed``, shared by every split)."""
    rng = np.random.default_rng([seed, 7919])
    params = []
    for _ in range(num_classes):
        waves = []
        for _ in range(2):
            waves.append(
                {
                    "k": rng.uniform(0.5, 2.5, size=2) * rng.choice([-1, 1], size=2),  # cycles over H and W
                    "omega": rng.uniform(0.2, 0.8) * rng.choice([-1, 1]),  # radians per latent frame
                    "mix": rng.normal(size=channels),
                }
            )
        params.append({"waves": waves, "offset": 0.3 * rng.normal(size=channels)})
    return params


def synthetic_latents(
    num: int,
    *,
    channels: int = 4,
    size: Sequence[int] = (5, 16, 16),
    num_classes: int = 4,
    seed: int = 0,
    split_seed: int = 0,
    noise: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` natural-scale latents ``(num, C, F, H, W)`` float32 and their class labels.

    ``seed`` fixes the classes; ``split_seed`` the videos drawn from them (a held-out split uses
    another ``split_seed``).
    """
    f, h, w = (int(s) for s in size)
    params = _class_params(num_classes, channels, seed)
    rng = np.random.default_rng([seed, split_seed, 104729])
    labels = np.arange(num) % num_classes
    tt, yy, xx = np.meshgrid(np.arange(f), np.arange(h) / h, np.arange(w) / w, indexing="ij")
    out = np.empty((num, channels, f, h, w), dtype=np.float32)
    for n in range(num):
        p = params[labels[n]]
        a = p["offset"][:, None, None, None] * np.ones((channels, f, h, w))
        for wave in p["waves"]:
            phase = rng.uniform(0, 2 * np.pi)
            amp = rng.uniform(0.8, 1.2)
            pattern = np.cos(2 * np.pi * (wave["k"][0] * yy + wave["k"][1] * xx) + wave["omega"] * tt + phase)
            a = a + amp * wave["mix"][:, None, None, None] * pattern[None]
        a = a / np.sqrt(np.mean(a**2) + 1e-12)
        out[n] = a + noise * rng.normal(size=a.shape)
    return out, labels


class SyntheticPyramids(Dataset):
    """Clean stage pyramids of :func:`synthetic_latents` with a fixed random context per class.

    :param num: number of videos.
    :param pyramid: the latent pyramid (Definition 1 stage signals).
    :param channels: latent channels (the model's ``in_dim``).
    :param size: stage-0 latent size ``(F, H, W)``.
    :param text_dim: context width (the model's ``text_dim``).
    :param context_len: context tokens per class.
    :param num_classes: text classes.
    :param seed: seed of the classes and their contexts.
    :param split_seed: seed of the videos (use another one for held-out data).
    """

    def __init__(
        self,
        num: int,
        pyramid: Pyramid,
        *,
        channels: int = 4,
        size: Sequence[int] = (5, 16, 16),
        text_dim: int = 16,
        context_len: int = 4,
        num_classes: int = 4,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        if num < 1:
            raise ValueError(f"a synthetic dataset needs at least one video, got {num}")
        latents, labels = synthetic_latents(
            num, channels=channels, size=size, num_classes=num_classes, seed=seed, split_seed=split_seed
        )
        self.latents = torch.from_numpy(latents)
        self.labels = labels
        self.pyramid = pyramid
        rng = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        self.contexts = torch.randn(num_classes, context_len, text_dim, generator=rng)
        self.x0s = [x for x in clean_pyramid_latent(self.latents, pyramid)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        label = int(self.labels[index])
        return {
            "x0s": [x[index] for x in self.x0s],
            "context": self.contexts[label],
            "context_len": int(self.contexts.shape[1]),
            "label": label,
        }
