"""Writing generated videos: GIF (Pillow), MP4 (PyAV, optional) and PNG strips of frames.

Videos are ``(3, F, H, W)`` arrays; :func:`to_uint8` maps a value range to 8-bit ``(F, H, W, 3)``.
NumPy and Pillow only, so the reference and the torch pipeline share one writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(video: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """``(3, F, H, W)`` video with values in ``[low, high]`` (clipped) to ``(F, H, W, 3)`` uint8."""
    unit = np.clip((np.asarray(video, dtype=np.float64) - low) / (high - low), 0, 1)
    return (unit * 255).round().astype(np.uint8).transpose(1, 2, 3, 0)


def write_gif(frames: np.ndarray, path: Path, scale: int, fps: int) -> None:
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def write_mp4(frames: np.ndarray, path: Path, scale: int, fps: int) -> bool:
    """Write an H.264 MP4 with PyAV; returns False when PyAV is not installed.

    Deterministic: the same frames give the same bytes on any machine with the same PyAV build
    (its libx264 and libavformat). The encoder runs on one thread: by default x264 picks its thread
    count from the CPUs the process may use and, as PyAV asks for slice threads, splits every
    frame into that many slices, so the bitstream (and the option string x264 writes into it)
    depended on the machine, its load and the process's CPU affinity. Timestamps are the frame
    indices at ``1 / fps``, and the muxer runs bit-exact (no library version string; no creation
    time is written).
    """
    try:
        import av
    except ImportError:
        return False
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = big.shape[2], big.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        for k, f in enumerate(big):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return True


def write_strip(rows: list[np.ndarray], path: Path, columns: int, scale: int) -> None:
    """One row per stage: ``columns`` evenly spaced frames, each stage nearest-upsampled to full size."""
    f, h, w, _ = rows[-1].shape
    tiles = []
    for row in rows:
        rf = row.shape[0]
        picks = np.linspace(0, rf - 1, columns).round().astype(int)
        up = row[picks].repeat(h // row.shape[1], axis=1).repeat(w // row.shape[2], axis=2)
        tiles.append(np.concatenate(list(up), axis=1))
    strip = np.concatenate(tiles, axis=0)
    Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST).save(path)


def write_video(frames: np.ndarray, path: Path, scale: int = 1, fps: int = 16) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as MP4 or GIF, chosen by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        write_gif(frames, path, scale, fps)
    elif suffix == ".mp4":
        if not write_mp4(frames, path, scale, fps):
            raise ValueError(f"writing {path} needs PyAV (pip install av); write a .gif instead")
    else:
        raise ValueError(f"unknown video format {path.suffix!r} for {path}; expected .mp4 or .gif")
    return path
