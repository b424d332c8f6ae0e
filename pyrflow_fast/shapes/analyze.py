r"""Measure a shapes video from its pixels: colour, shape, direction, temporal consistency.

The object is the only saturated thing in a shapes frame (:mod:`pyrflow_fast.shapes.data`: object
chroma ``max(rgb) - min(rgb) >= 0.75``, background chroma ``<= 0.15``), so a soft object mask is
``w = clip((chroma - 0.3) / 0.2, 0, 1)`` per pixel. From it:

- **colour**: the palette colour nearest (Euclidean RGB) to the mask-weighted mean colour;
- **shape**: per frame, a square, circle and triangle of the mask's area are centred at the mask's
  centroid (the triangle at its own centroid) and the one with the highest soft IoU wins;
  the frame votes are averaged;
- **direction**: the centroid's least-squares velocity over frames; the axis with the larger
  component and its sign give left/right/up/down; under 0.5 pixel per frame counts as "static";
- **subject consistency**: the mean soft IoU of each frame's mask with the next one's, after moving
  it by the centroid displacement (bilinear sub-pixel shift); 1 for a rigid moving object;
- **background flicker**: mean absolute change between consecutive frames, in 8-bit levels, over
  pixels that are background (mask below 0.05 after a one-pixel dilation) in both frames;
  0 for a static background.

A frame without object pixels (mask sum under 2) makes colour, shape and direction ``"none"`` when
no frame has any, and counts zero in subject consistency.

>>> from pyrflow_fast.shapes.data import Video, render
>>> v = render(Video("blue", "triangle", "up", "coffee", 11.0, 1.5, (16.0, 24.0), (0.2, 0.3, 0.6)))
>>> r = analyze(v)
>>> r.color, r.shape, r.direction, round(r.subject, 2) > 0.9, r.flicker < 0.5
('blue', 'triangle', 'up', True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .data import COLORS, DIRECTIONS, SHAPES, SIZE

__all__ = ["Analysis", "analyze", "analyze_batch", "object_mask"]

_MIN_AREA = 2.0
_SUPER = 4


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyze` measured (``"none"``: no object found)."""

    color: str
    shape: str
    direction: str
    subject: float
    flicker: float
    speed: float

    def as_dict(self) -> dict:
        return asdict(self)


def object_mask(frames: np.ndarray) -> np.ndarray:
    """Soft object mask ``(F, H, W)`` of frames ``(F, H, W, 3)`` in [0, 1]."""
    chroma = frames.max(axis=-1) - frames.min(axis=-1)
    return np.clip((chroma - 0.3) / 0.2, 0.0, 1.0)


def _template(shape: str, cx: float, cy: float, area: float, h: int, w: int) -> np.ndarray:
    """Coverage of ``shape`` with ``area`` whose centroid is ``(cx, cy)`` (supersampled)."""
    ys = (np.arange(h * _SUPER) + 0.5) / _SUPER
    xs = (np.arange(w * _SUPER) + 0.5) / _SUPER
    x, y = xs[None, :], ys[:, None]
    if shape == "square":
        r = np.sqrt(area) / 2
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "circle":
        r = np.sqrt(area / np.pi)
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    else:  # triangle, apex up, base = height = s, area s^2 / 2, centroid 2s/3 below the apex
        s = np.sqrt(2 * area)
        depth = y - (cy - 2 * s / 3)
        inside = (depth >= 0) & (depth <= s) & (np.abs(x - cx) <= depth / 2)
    return inside.reshape(h, _SUPER, w, _SUPER).mean(axis=(1, 3))


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / union) if union > 0 else 0.0


def analyze(video: np.ndarray) -> Analysis:
    """Measure one video ``(3, F, H, W)`` in ``[-1, 1]`` (the layout of :func:`pyrflow_fast.sample.generate`)."""
    video = np.asarray(video, dtype=np.float64)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, F, H, W), got {video.shape}")
    frames = np.clip((video.transpose(1, 2, 3, 0) + 1) / 2, 0, 1)
    mask = object_mask(frames)
    f, h, w = mask.shape
    areas = mask.sum(axis=(1, 2))
    present = areas >= _MIN_AREA
    flicker = _flicker(frames, mask)
    if not present.any():
        return Analysis("none", "none", "none", 0.0, flicker, 0.0)
    weights = mask[present]
    mean_rgb = (frames[present] * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()
    names = list(COLORS)
    color = names[int(np.argmin([np.sum((mean_rgb - np.array(COLORS[n])) ** 2) for n in names]))]

    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx = np.where(present, (mask * xx).sum(axis=(1, 2)) / np.maximum(areas, 1e-9), np.nan)
    cy = np.where(present, (mask * yy).sum(axis=(1, 2)) / np.maximum(areas, 1e-9), np.nan)
    votes = np.zeros(len(SHAPES))
    for k in np.flatnonzero(present):
        votes += [_soft_iou(mask[k], _template(s, cx[k], cy[k], areas[k], h, w)) for s in SHAPES]
    shape = SHAPES[int(np.argmax(votes))]

    direction, speed = "static", 0.0
    t = np.flatnonzero(present)
    if len(t) >= 2:
        vx = np.polyfit(t, cx[t], 1)[0]
        vy = np.polyfit(t, cy[t], 1)[0]
        speed = float(np.hypot(vx, vy))
        if speed >= 0.5:
            vec = (np.sign(vx), 0) if abs(vx) >= abs(vy) else (0, np.sign(vy))
            direction = next(n for n, d in DIRECTIONS.items() if d == vec)

    ious = []
    for k in range(f - 1):
        if present[k] and present[k + 1]:
            moved = shift_linear(mask[k], cy[k + 1] - cy[k], cx[k + 1] - cx[k])
            ious.append(_soft_iou(moved, mask[k + 1]))
        else:
            ious.append(0.0)
    return Analysis(color, shape, direction, float(np.mean(ious)), flicker, speed)


def _interpolate(a: np.ndarray, d: float, axis: int) -> np.ndarray:
    """``a`` moved by ``d`` along ``axis``: ``out[i] = a(i - d)``, linear between samples, 0 outside ``[0, n - 1]``."""
    n = a.shape[axis]
    c = np.arange(n) - d
    i0 = np.clip(np.floor(c).astype(int), 0, n - 2)
    t = np.expand_dims(c - i0, [k for k in range(a.ndim) if k != axis])
    valid = np.expand_dims((c >= 0) & (c <= n - 1), [k for k in range(a.ndim) if k != axis])
    return np.where(valid, (1 - t) * np.take(a, i0, axis) + t * np.take(a, i0 + 1, axis), 0.0)


def shift_linear(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``scipy.ndimage.shift(a, (dy, dx), order=1, mode="constant")`` of an ``(H, W)`` array, in NumPy
    (importing ``scipy.ndimage`` costs ``make sample`` about a quarter of a second)."""
    return _interpolate(_interpolate(a, dy, 0), dx, 1)


def max_3x3(x: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.maximum_filter(x, size=(1, 3, 3))`` of ``(F, H, W)``: the maximum over each 3 x 3
    neighbourhood, edges repeated (for a maximum, the same as scipy's default reflection)."""
    h, w = x.shape[-2:]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return np.max([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _flicker(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean |frame[k+1] - frame[k]| in 8-bit levels over pixels that are background in both."""
    near = max_3x3(mask) < 0.05
    both = near[1:] & near[:-1]
    if not both.any():
        return 255.0
    diff = np.abs(frames[1:] - frames[:-1]).mean(axis=-1)
    return float(diff[both].mean() * 255)


def analyze_batch(videos, prompts: list[tuple[str, str, str]] | None = None) -> dict:
    """Analyse ``(B, 3, F, H, W)`` videos; with ``prompts`` (``(color, shape, direction)`` each)
    also per-video correctness. Returns per-video lists under ``"videos"`` and the means."""
    arr = videos.detach().cpu().float().numpy() if hasattr(videos, "detach") else np.asarray(videos)
    if arr.shape[-2:] != (SIZE, SIZE):
        raise ValueError(f"shapes videos are {SIZE}x{SIZE}, got {arr.shape}")
    rows = [analyze(v).as_dict() for v in arr]
    if prompts is not None:
        if len(prompts) != len(rows):
            raise ValueError(f"{len(rows)} videos but {len(prompts)} prompts")
        for row, (c, s, d) in zip(rows, prompts):
            row.update(color_ok=row["color"] == c, shape_ok=row["shape"] == s, direction_ok=row["direction"] == d)
            row["all_ok"] = row["color_ok"] and row["shape_ok"] and row["direction_ok"]
    keys = [k for k, v in rows[0].items() if not isinstance(v, str)]
    return {"videos": rows, **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
