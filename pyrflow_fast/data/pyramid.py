r"""Clean per-stage training signals :math:`x_0^{(i)}` in orthonormal units (theory §3).

:func:`clean_pyramid` builds them from a video (or, for Definition 1, from its latents):

- **Definition 1** (latent space): encode the full video once with ``components.encode_video``
  (normalised latents, natural units = orthonormal units at stage 0) and downsample the latents
  with the latent pyramid, :math:`x_0^{(i+1)} = \mathrm{down}(x_0^{(i)})`
  (:func:`pyrflow_fast.process.clean_pyramid_latent`).
- **Definition 2** (pixel space): downsample the RGB video with the *pixel pyramid*, encode every
  stage with the VAE, and multiply by the latent pyramid's per-frame gain :math:`g_i`
  (:func:`pyrflow_fast.process.clean_pyramid_pixel`). The default pixel pyramid is
  :func:`pixel_pyramid_for`: ``avgpool`` (box-filter mean pooling, the antialiasing filter
  Pyramid Flow uses) with the latent pyramid's factors and the first-frame rule.

Why the first-frame rule in pixel space matches the VAE: Wan's causal VAE maps ``1 + 4k`` pixel
frames to ``1 + k`` latent frames (pixel frame 0 alone to latent frame 0, then 4 pixel frames per
latent frame). Halving the pixel video in time under the first-frame rule gives ``1 + 2k`` frames,
which encode to ``1 + k/2`` latent frames: exactly the latent pyramid's coarse frame count, and
latent frame ``j >= 1`` of the coarse stage covers pixel frames ``8j-7 .. 8j`` of the original,
the same span as latent frames ``2j-1, 2j`` that Haar merges. Wan's 81 frames: pixel
81 -> 41 -> 21 = (1+80) -> (1+40) -> (1+20), latents 21 -> 11 -> 6. Spatially, every pixel stage
must stay a multiple of the VAE stride (8), i.e. ``H, W`` multiples of ``8 * 2**(S-1)``.

For a *linear* encoder that mean-pools over the VAE stride (first-frame rule), Definition 2 equals
Definition 1 exactly for every video (both are block means times :math:`\sqrt r`); the real VAE is
nonlinear and zero-pads at the borders, so the two differ (see ``tests/fast/test_data.py``).
"""

from __future__ import annotations

import torch

from ..process import clean_pyramid_latent, clean_pyramid_pixel
from ..resample import WAN_PYRAMID, Pyramid, Resampler

__all__ = ["DEFINITIONS", "clean_pyramid", "pixel_pyramid_for"]

DEFINITIONS = (1, 2)


def pixel_pyramid_for(pyramid: Pyramid) -> Pyramid:
    """The ``avgpool`` pixel pyramid with ``pyramid``'s per-transition factors and first-frame rule.

    >>> p = pixel_pyramid_for(WAN_PYRAMID)
    >>> [s[-3:] for s in p.shapes((1, 3, 81, 448, 832))]
    [(81, 448, 832), (41, 224, 416), (21, 112, 208)]
    """
    return Pyramid(tuple(Resampler("avgpool", tr.factors, tr.first_frame) for tr in pyramid.transitions))


def clean_pyramid(
    video_or_latents: torch.Tensor,
    definition: int,
    components,
    pyramid: Pyramid = WAN_PYRAMID,
    *,
    pixel_pyramid: Pyramid | None = None,
    kind: str | None = None,
) -> list[torch.Tensor]:
    """Clean stage signals in orthonormal units, finest first, each ``(B, C, F_i, H_i, W_i)`` float32.

    :param video_or_latents: a video ``(B, 3, F, H, W)`` in ``[-1, 1]``, or (Definition 1 only)
        normalised latents ``(B, C, F', H', W')``; an unbatched input gives unbatched outputs.
    :param definition: 1 (latent-space pyramid) or 2 (pixel-space pyramid).
    :param components: anything with ``encode_video`` (e.g. :class:`~pyrflow_fast.pipeline.WanComponents`);
        unused when latents are given.
    :param pyramid: the latent pyramid (transitions and gains).
    :param pixel_pyramid: Definition 2's pixel downsamplers; default :func:`pixel_pyramid_for`.
    :param kind: ``"video"`` or ``"latents"``; default: a 3-channel input is a video.
    :raises ValueError: for an unknown definition, latents given to Definition 2, or sizes that do
        not fit the pyramid (the message names the stage).
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be 1 (latent space) or 2 (pixel space), got {definition!r}")
    x = torch.as_tensor(video_or_latents)
    unbatched = x.ndim == 4
    if unbatched:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(
            f"expected (B, C, F, H, W) or (C, F, H, W), got shape {tuple(torch.as_tensor(video_or_latents).shape)}"
        )
    if kind is None:
        kind = "video" if x.shape[1] == 3 else "latents"
    if kind not in ("video", "latents"):
        raise ValueError(f"kind must be 'video' or 'latents', got {kind!r}")
    if kind == "latents" and definition == 2:
        raise ValueError("Definition 2 encodes every pixel stage: give the video (B, 3, F, H, W), not latents")
    if kind == "video" and x.shape[1] != 3:
        raise ValueError(f"a video must have 3 channels, got shape {tuple(x.shape)}")
    if definition == 1:
        z = x.float() if kind == "latents" else components.encode_video(x).float()
        pyramid.shapes(tuple(z.shape))  # clear error when the latents do not fit the pyramid
        out = clean_pyramid_latent(z, pyramid)
    else:
        pix = pixel_pyramid_for(pyramid) if pixel_pyramid is None else pixel_pyramid
        shapes = pix.shapes(tuple(x.shape))
        check = getattr(components, "latent_size", None)
        if check is not None:
            for i, s in enumerate(shapes):
                try:
                    check(*s[-3:])
                except ValueError as err:
                    raise ValueError(
                        f"pixel pyramid stage {i} has size {s[-3:]} that the VAE cannot encode: {err}"
                    ) from None
        out = clean_pyramid_pixel(x.float(), pyramid, lambda v: components.encode_video(v).float(), pix)
    return [o[0] for o in out] if unbatched else out
