r"""Read a fixed-length, fixed-size training clip from a video file (PyAV).

:func:`read_video` decodes a video with PyAV, samples ``frames`` frames at a target frame rate by
timestamps (frame ``i`` is the source frame shown at time ``start + i / fps``: the last frame whose
presentation time is at or before it), resizes them aspect-preserving with an antialiased filter
and center-crops to ``(height, width)``. The result is a float32 tensor ``(3, F, H, W)`` in
``[-1, 1]``, the form :meth:`pyrflow_fast.pipeline.WanComponents.encode_video` takes.

A video that cannot be used raises :class:`VideoSkipped` with a short machine-readable ``reason``
(one of :data:`REASONS`), so that a dataset can skip and count it instead of crashing a long run:

- ``missing``: the file does not exist;
- ``unreadable``: PyAV cannot open it (corrupt or not a video container);
- ``no_video_stream``: the container holds no video stream;
- ``decode_error``: decoding failed part-way, or no frame could be decoded;
- ``too_short``: the video lasts fewer than ``frames / fps`` seconds (the span of ``frames``
  frames at ``fps``, each shown for ``1 / fps`` seconds).

>>> clip_seconds(17, 8.0)
2.125
>>> center_crop_box(720, 1280, 64, 64)
(0, 280, 720, 720)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "REASONS",
    "VideoInfo",
    "VideoSkipped",
    "center_crop_box",
    "clip_seconds",
    "probe_video",
    "read_video",
    "resize_center_crop",
]

REASONS = ("missing", "unreadable", "no_video_stream", "decode_error", "too_short")
"""The reasons :class:`VideoSkipped` carries."""

_TIME_TOL = 1e-6  # seconds; absorbs rounding of timestamps such as 0.1 = 3 / 30


class VideoSkipped(Exception):
    """A video that cannot give a training clip.

    :param reason: one of :data:`REASONS`.
    :param path: the video file.
    :param detail: a human-readable explanation.
    """

    def __init__(self, reason: str, path: str | Path | None = None, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        self.reason = reason
        self.path = None if path is None else str(path)
        self.detail = detail
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream.

    :param width: frame width in pixels.
    :param height: frame height in pixels.
    :param fps: average frame rate (``None`` when unknown).
    :param duration: seconds (``None`` when the container does not say).
    :param num_frames: frame count from the container (0 when unknown).
    """

    width: int
    height: int
    fps: float | None
    duration: float | None
    num_frames: int


def clip_seconds(frames: int, fps: float) -> float:
    """Seconds a video must last to give ``frames`` frames at ``fps``: ``frames / fps``."""
    return frames / fps


def center_crop_box(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)``: the centered source window with the target's aspect ratio.

    Resizing that window to ``(height, width)`` equals an aspect-preserving resize that covers the
    target followed by a center crop (up to sub-pixel rounding of the window).
    """
    scale = max(height / src_h, width / src_w)
    crop_h = min(src_h, max(1, round(height / scale)))
    crop_w = min(src_w, max(1, round(width / scale)))
    return (src_h - crop_h) // 2, (src_w - crop_w) // 2, crop_h, crop_w


def resize_center_crop(frames: np.ndarray | torch.Tensor, height: int, width: int, chunk: int = 8) -> torch.Tensor:
    """``(F, h, w, 3)`` uint8 RGB frames to a float32 ``(3, F, height, width)`` video in ``[-1, 1]``.

    Aspect-preserving (center crop of the source to the target's aspect ratio, see
    :func:`center_crop_box`), then bilinear resampling with ``antialias=True`` (a proper low-pass
    filter when shrinking). Works on ``chunk`` frames at a time to bound memory.

    >>> v = resize_center_crop(np.full((2, 30, 40, 3), 255, np.uint8), 8, 8)
    >>> tuple(v.shape), float(v.min()), float(v.max())
    ((3, 2, 8, 8), 1.0, 1.0)
    """
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {tuple(frames.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    top, left, ch, cw = center_crop_box(frames.shape[1], frames.shape[2], height, width)
    frames = frames[:, top : top + ch, left : left + cw]
    out = []
    for k in range(0, frames.shape[0], chunk):
        x = frames[k : k + chunk].permute(0, 3, 1, 2).to(torch.float32)
        if (ch, cw) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out.append(x)
    video = torch.cat(out).div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)
    return video.permute(1, 0, 2, 3).contiguous()


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoSkipped("missing", path, "no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise VideoSkipped("unreadable", path, f"{type(err).__name__}: {err}") from None
    if not container.streams.video:
        container.close()
        raise VideoSkipped("no_video_stream", path, "the container has no video stream")
    return container


def _info(container) -> VideoInfo:
    import av

    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return VideoInfo(
        width=int(stream.width),
        height=int(stream.height),
        fps=float(rate) if rate else None,
        duration=duration if duration and duration > 0 else None,
        num_frames=int(stream.frames or 0),
    )


def probe_video(path: str | Path) -> VideoInfo:
    """Container metadata of ``path``'s first video stream; raises :class:`VideoSkipped` if unusable."""
    path = Path(path)
    container = _open(path)
    try:
        return _info(container)
    finally:
        container.close()


def read_video(
    path: str | Path,
    frames: int,
    height: int,
    width: int,
    fps: float,
    *,
    start: float | None = None,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Read ``frames`` frames at ``fps`` from ``path`` as a float32 ``(3, F, height, width)`` video in ``[-1, 1]``.

    :param start: clip start in seconds from the stream's start; default 0, or drawn uniformly
        from ``[0, duration - frames / fps]`` with ``rng`` when ``rng`` is given.
    :param rng: a NumPy generator for the random start (ignored when ``start`` is given).
    :raises VideoSkipped: for a missing, unreadable, undecodable or too short video.
    :raises ValueError: for invalid arguments (not a property of the video).
    """
    import av

    if frames < 1 or height < 1 or width < 1 or not fps > 0:
        raise ValueError(f"need frames, height, width >= 1 and fps > 0, got {frames}, {height}, {width}, {fps}")
    path = Path(path)
    need = clip_seconds(frames, fps)
    container = _open(path)
    try:
        info = _info(container)
        if info.duration is not None and info.duration + _TIME_TOL < need:
            raise VideoSkipped(
                "too_short", path, f"{info.duration:.3f} s < {need:.3f} s needed for {frames} frames at {fps} fps"
            )
        if start is None:
            start = float(rng.uniform(0.0, info.duration - need)) if rng is not None and info.duration else 0.0
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        try:
            picked = _decode_at(container, path, [start + i / fps for i in range(frames)], info)
        except av.FFmpegError as err:
            raise VideoSkipped("decode_error", path, f"{type(err).__name__}: {err}") from None
    finally:
        container.close()
    return resize_center_crop(picked, height, width)


def _decode_at(container, path: Path, targets: list[float], info: VideoInfo, seek: bool = True) -> np.ndarray:
    """RGB frames ``(len(targets), h, w, 3)`` uint8: per target time, the frame shown at that time.

    The frame shown at time ``t`` is the last one whose presentation time is ``<= t``; the last
    frame of the stream is shown for one source frame period.
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
    period = 1.0 / info.fps if info.fps else 0.0
    if seek and targets[0] > period and tb is not None:
        # jump to the keyframe at or before the clip start; decoding proceeds from there
        container.seek(int((origin + targets[0]) / tb), stream=stream, backward=True, any_frame=False)
    out: list[np.ndarray] = []
    prev, prev_time, prev_rgb = None, -math.inf, None
    for count, frame in enumerate(container.decode(stream)):
        t = (frame.time - origin) if frame.time is not None else count * period
        if prev is None and t > targets[0] + _TIME_TOL:
            if seek and targets[0] > period:  # the seek landed after the start: decode from the beginning
                container.seek(0, stream=stream, backward=True, any_frame=False)
                return _decode_at(container, path, targets, info, seek=False)
            prev, prev_time = frame, -math.inf  # the first frame is late: let it cover the times before it
        while len(out) < len(targets) and targets[len(out)] + _TIME_TOL < t:
            if prev_rgb is None:
                prev_rgb = prev.to_ndarray(format="rgb24")
            out.append(prev_rgb)
        if len(out) == len(targets):
            return np.stack(out)
        prev, prev_time, prev_rgb = frame, t, None
    if prev is None:
        raise VideoSkipped("decode_error", path, "no frame could be decoded")
    last_end = prev_time + period
    while len(out) < len(targets):
        t = targets[len(out)]
        if t > prev_time + _TIME_TOL and t + _TIME_TOL >= last_end:
            raise VideoSkipped(
                "too_short", path, f"the frames end at {last_end:.3f} s, the clip needs one at {t:.3f} s"
            )
        if prev_rgb is None:
            prev_rgb = prev.to_ndarray(format="rgb24")
        out.append(prev_rgb)
    return np.stack(out)
