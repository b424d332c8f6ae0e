r"""Read a fixed-length, fixed-size training clip from a video file (PyAV).

:func:`read_video` decodes a video with PyAV, samples ``frames`` frames at a target frame rate by
timestamps (frame ``i`` is the source frame shown at time ``start + i / fps``: the last frame whose
presentation time is at or before it), resizes them aspect-preserving with an antialiased filter
and center-crops to ``(height, width)``. The result is a float32 tensor ``(3, F, H, W)`` in
``[-1, 1]``, the form :meth:`pyrflow_fast.pipeline.WanComponents.encode_video` takes.

Memory: each picked frame is converted to RGB, resized and cropped right after it is decoded, so a
clip needs the output tensor plus one source frame (as RGB and as float32) and the decoder's
buffers, not all its picked frames at full resolution (24 MiB each at 3840x2160, before float32
copies). Measured peak resident memory above the process's before the call: a 17x448x832 clip
(73 MiB) from a 3840x2160 video, 418 MiB (1513 MiB when the full frames were stacked first); an
81x448x832 clip (346 MiB) from a 1920x1080 video, 464 MiB (1554 MiB). The result is the same, bit
for bit, as resizing the stacked frames (:func:`resize_center_crop` treats every frame on its own).

A video that cannot be used raises :class:`VideoSkipped` with a short machine-readable ``reason``
(one of :data:`REASONS`), so that a dataset can skip and count it instead of crashing a long run:

- ``missing``: the file does not exist;
- ``unreadable``: PyAV cannot open it (corrupt or not a video container);
- ``no_video_stream``: the container holds no video stream;
- ``decode_error``: decoding failed part-way, or no frame could be decoded;
- ``too_short``: the video lasts fewer than ``frames / fps`` seconds (the span of ``frames``
  frames at ``fps``, each shown for ``1 / fps`` seconds);
- ``too_large``: a frame has more than ``max_pixels`` pixels (``width * height`` of the source;
  checked on the container's header before decoding, and on every decoded frame), or memory ran
  out while decoding it.

>>> clip_seconds(17, 8.0)
2.125
>>> center_crop_box(720, 1280, 64, 64)
(0, 280, 720, 720)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REASONS",
    "VideoInfo",
    "VideoSkipped",
    "center_crop_box",
    "clip_seconds",
    "probe_video",
    "read_video",
    "resize_center_crop",
]

REASONS = ("missing", "unreadable", "no_video_stream", "decode_error", "too_short", "too_large")
"""The reasons :class:`VideoSkipped` carries."""

DEFAULT_MAX_PIXELS = 4096 * 2160
"""Default source frame size limit of :func:`read_video`: DCI 4K, 8,847,360 pixels.

Every 4K (UHD 3840x2160, DCI 4096x2160) or smaller video passes; an 8K video (33 MP), or a header
claiming an absurd size, is skipped as ``too_large`` before any decoding: one such frame costs
~0.1 GB as RGB and ~0.4 GB as float32 while it is resized, and decoding it is slow."""

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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Read ``frames`` frames at ``fps`` from ``path`` as a float32 ``(3, F, height, width)`` video in ``[-1, 1]``.

    :param start: clip start in seconds from the stream's start; default 0, or drawn uniformly
        from ``[0, duration - frames / fps]`` with ``rng`` when ``rng`` is given.
    :param rng: a NumPy generator for the random start (ignored when ``start`` is given).
    :param max_pixels: skip (``too_large``) a video whose frames have more than this many pixels
        (source ``width * height``); ``None``: no limit.
    :raises VideoSkipped: for a missing, unreadable, undecodable, too short or too large video.
    :raises ValueError: for invalid arguments (not a property of the video).
    """
    import av
    from av.video.reformatter import VideoReformatter

    if frames < 1 or height < 1 or width < 1 or not fps > 0:
        raise ValueError(f"need frames, height, width >= 1 and fps > 0, got {frames}, {height}, {width}, {fps}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None (no limit), got {max_pixels}")
    path = Path(path)
    need = clip_seconds(frames, fps)
    container = _open(path)
    try:
        info = _info(container)
        _check_size(path, info.width, info.height, max_pixels, "the container says")
        if info.duration is not None and info.duration + _TIME_TOL < need:
            raise VideoSkipped(
                "too_short", path, f"{info.duration:.3f} s < {need:.3f} s needed for {frames} frames at {fps} fps"
            )
        if start is None:
            start = float(rng.uniform(0.0, info.duration - need)) if rng is not None and info.duration else 0.0
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        video = torch.empty(3, frames, height, width, dtype=torch.float32)
        # one reformatter per clip: frame.to_ndarray(format=...) sets up a new swscale context for every
        # frame (several times the decoding of a small frame); not one per thread: a kept one inherited by a
        # forked DataLoader worker hung the suite (the worker waiting on a futex)
        reformatter = VideoReformatter()
        try:
            last = clip = None
            for i, frame in enumerate(_frames_at(container, path, [start + i / fps for i in range(frames)], info)):
                if frame is not last:  # a source frame shown at several target times is resized once
                    _check_size(path, frame.width, frame.height, max_pixels, "a decoded frame has")
                    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                    clip = resize_center_crop(rgb[None], height, width)[:, 0]
                    last = frame
                video[:, i] = clip
        except MemoryError as err:  # before FFmpegError: PyAV's ENOMEM error is both
            raise VideoSkipped(
                "too_large", path, f"out of memory decoding {info.width}x{info.height} frames ({type(err).__name__})"
            ) from None
        except av.FFmpegError as err:  # before RuntimeError: some of PyAV's errors are both
            raise VideoSkipped("decode_error", path, f"{type(err).__name__}: {err}") from None
        except RuntimeError as err:
            if "can't allocate memory" not in str(err):  # torch's CPU allocator failing
                raise
            raise VideoSkipped(
                "too_large", path, f"out of memory resizing {info.width}x{info.height} frames ({err})"
            ) from None
    finally:
        container.close()
    return video


def _check_size(path: Path, width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise VideoSkipped(
            "too_large", path, f"{what} {width}x{height} = {width * height} pixels per frame > max_pixels {max_pixels}"
        )


def _frames_at(container, path: Path, targets: list[float], info: VideoInfo, seek: bool = True) -> Iterator:
    """Yield, per target time, the decoded ``av.VideoFrame`` shown at that time.

    The frame shown at time ``t`` is the last one whose presentation time is ``<= t``; the last
    frame of the stream is shown for one source frame period. A frame shown at several target
    times is yielded as the same object each time. Frames are decoded as they are consumed, so
    only the current one (and the decoder's own buffers) is held.
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
    period = 1.0 / info.fps if info.fps else 0.0
    if seek and targets[0] > period and tb is not None:
        # jump to the keyframe at or before the clip start; decoding proceeds from there
        container.seek(int((origin + targets[0]) / tb), stream=stream, backward=True, any_frame=False)
    done = 0  # targets yielded so far
    prev, prev_time = None, -math.inf
    for count, frame in enumerate(container.decode(stream)):
        t = (frame.time - origin) if frame.time is not None else count * period
        if prev is None and t > targets[0] + _TIME_TOL:
            if seek and targets[0] > period:  # the seek landed after the start: decode from the beginning
                container.seek(0, stream=stream, backward=True, any_frame=False)
                yield from _frames_at(container, path, targets, info, seek=False)
                return
            prev, prev_time = frame, -math.inf  # the first frame is late: let it cover the times before it
        while done < len(targets) and targets[done] + _TIME_TOL < t:
            yield prev
            done += 1
        if done == len(targets):
            return
        prev, prev_time = frame, t
    if prev is None:
        raise VideoSkipped("decode_error", path, "no frame could be decoded")
    last_end = prev_time + period
    while done < len(targets):
        t = targets[done]
        if t > prev_time + _TIME_TOL and t + _TIME_TOL >= last_end:
            raise VideoSkipped(
                "too_short", path, f"the frames end at {last_end:.3f} s, the clip needs one at {t:.3f} s"
            )
        yield prev
        done += 1
