r"""A folder of videos with captions, as a torch ``Dataset`` of fixed-size clips.

The folder holds video files and a caption file, either CSV with a header row that has the columns
``video`` and ``caption`` (other columns are ignored) or JSON Lines with one object
``{"video": ..., "caption": ...}`` per line. Video paths are relative to the folder (absolute
paths are kept). The same video may appear in several rows (several captions).

Bad *videos* never stop a run: a row naming a missing file is dropped when the dataset is built,
and a corrupt, undecodable, too short or too large (``max_pixels``, or out of memory while
decoding) video is skipped when it is read; each is logged once (a ``WARNING`` on the
``pyrflow_fast.data`` logger) and counted in :attr:`VideoTextDataset.skipped` by reason.
A bad *dataset* is an error at construction: a missing or non-directory root, a missing caption
file, or a malformed caption file raise ``FileNotFoundError`` / ``NotADirectoryError`` /
``ValueError`` naming the path and what was expected.

Sampling: clip ``i`` starts at 0 when ``seed`` is ``None``, otherwise at a start drawn with
``numpy.random.default_rng([seed, i])``, so a clip depends only on ``(seed, i)``, not on the
iteration order or the worker that reads it.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .video import DEFAULT_MAX_PIXELS, VideoSkipped, read_video

__all__ = ["CaptionRow", "VideoTextDataset", "read_captions"]

logger = logging.getLogger("pyrflow_fast.data")


@dataclass(frozen=True)
class CaptionRow:
    """One caption-file row: ``video`` as written in the file, its resolved ``path``, the ``caption``."""

    video: str
    path: Path
    caption: str
    line: int


def read_captions(
    path: str | Path, root: str | Path | None = None, allow_outside_root: bool = False
) -> list[CaptionRow]:
    """Parse a ``.csv`` or ``.jsonl`` caption file; video paths resolve against ``root`` (default: its folder).

    A UTF-8 byte-order mark (spreadsheet exports) is accepted. Video paths must stay inside
    ``root`` (no ``..`` or absolute path leading out of it, symlinks resolved) unless
    ``allow_outside_root``: a caption file is data, and must not make the loader open any file
    on the machine.

    :raises FileNotFoundError: the file does not exist.
    :raises ValueError: an unknown suffix, a missing column/key, a non-string value, an empty
        video name, a video path outside ``root``, a line that is not a JSON object, or a file
        without rows; the message names the file and the line.

    >>> import pathlib, shutil, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "captions.csv").write_text('video,caption\\nclips/a.mp4,"a cat, running"\\n')
    >>> [(r.video, r.caption, r.path == d / "clips/a.mp4") for r in read_captions(d / "captions.csv")]
    [('clips/a.mp4', 'a cat, running', True)]
    >>> shutil.rmtree(d)
    """
    path = Path(path)
    root = path.parent if root is None else Path(root)
    inside = root.resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"caption file {path} not found (expected a .csv with columns video,caption or a .jsonl)"
        )
    suffix = path.suffix.lower()
    rows: list[CaptionRow] = []

    def add(video, caption, line: int) -> None:
        for key, value in (("video", video), ("caption", caption)):
            if not isinstance(value, str):
                raise ValueError(f"{path}, line {line}: {key!r} must be a string, got {value!r}")
        if not video.strip():
            raise ValueError(f"{path}, line {line}: empty video path")
        resolved = root / video.strip()
        if not allow_outside_root and not resolved.resolve().is_relative_to(inside):
            raise ValueError(
                f"{path}, line {line}: video path {video!r} leads outside the dataset folder {root}; "
                "use paths inside it (or allow paths outside explicitly)"
            )
        rows.append(CaptionRow(video, resolved, caption, line))

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = reader.fieldnames or []
        missing = [c for c in ("video", "caption") if c not in fields]
        if missing:
            raise ValueError(
                f"{path}: the CSV header must have the columns video,caption; missing {missing} (header {fields})"
            )
        try:
            for record in reader:
                line = reader.line_num
                if None in record:
                    raise ValueError(f"{path}, line {line}: more fields than the header has columns")
                add(record["video"], record["caption"], line)
        except csv.Error as err:
            raise ValueError(f"{path}: malformed CSV: {err}") from None
    elif suffix == ".jsonl":
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line}: not valid JSON ({err})") from None
            if not isinstance(record, dict) or "video" not in record or "caption" not in record:
                raise ValueError(
                    f'{path}, line {line}: expected an object {{"video": ..., "caption": ...}}, '
                    f"got {raw.strip()[:80]!r}"
                )
            add(record["video"], record["caption"], line)
    else:
        raise ValueError(f"caption file {path}: unknown format {suffix!r}; expected .csv (video,caption) or .jsonl")
    if not rows:
        raise ValueError(f"caption file {path} has no rows")
    return rows


class VideoTextDataset(Dataset):
    """Video clips ``(3, frames, height, width)`` in ``[-1, 1]`` with their captions.

    :param root: the folder of videos.
    :param captions: the caption file, relative to ``root`` or absolute (``.csv`` or ``.jsonl``).
    :param frames: frames per clip (``4k + 1`` for the Wan VAE).
    :param height: clip height in pixels.
    :param width: clip width in pixels.
    :param fps: frame rate the clip is sampled at (timestamps, not frame indices).
    :param seed: ``None``: every clip starts at 0; an integer: seeded random starts.
    :param allow_outside_root: accept caption paths that lead outside ``root`` (see :func:`read_captions`).
    :param max_pixels: skip as ``too_large`` a video whose frames have more than this many pixels
        (source ``width * height``, default :data:`~pyrflow_fast.data.video.DEFAULT_MAX_PIXELS`,
        DCI 4K); ``None``: no limit.

    ``dataset[i]`` returns ``{"video", "caption", "path", "index"}`` or raises
    :class:`~pyrflow_fast.data.video.VideoSkipped` (and records the skip); iterating, or
    :meth:`get`, skips such videos instead. :attr:`skipped` counts skipped videos by reason,
    :attr:`skipped_videos` lists ``(path, reason)``, each video once.
    """

    def __init__(
        self,
        root: str | Path,
        captions: str | Path = "captions.csv",
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        fps: float = 8.0,
        seed: int | None = None,
        allow_outside_root: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"dataset folder {root} not found (expected a folder of videos and a caption file)")
        if not root.is_dir():
            raise NotADirectoryError(
                f"dataset path {root} is not a folder (expected a folder of videos and a caption file)"
            )
        if frames < 1 or height < 1 or width < 1 or not fps > 0:
            raise ValueError(f"need frames, height, width >= 1 and fps > 0, got {frames}, {height}, {width}, {fps}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or None (no limit), got {max_pixels}")
        self.root = root
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.captions_path = Path(captions) if Path(captions).is_absolute() else root / captions
        self.frames, self.height, self.width, self.fps, self.seed = (
            int(frames),
            int(height),
            int(width),
            float(fps),
            seed,
        )
        self._skips: dict[str, str] = {}
        self.rows: list[CaptionRow] = []
        for row in read_captions(self.captions_path, root, allow_outside_root):
            if row.path.is_file():
                self.rows.append(row)
            else:
                self._skip(VideoSkipped("missing", row.path, f"named on line {row.line} of {self.captions_path}"))

    # ------------------------------------------------------------------ bookkeeping
    def _skip(self, err: VideoSkipped) -> None:
        if err.path not in self._skips:
            self._skips[err.path] = err.reason
            logger.warning("skipping video %s", err)

    @property
    def skipped(self) -> Counter:
        """Skipped videos so far, counted by reason (each video once)."""
        return Counter(self._skips.values())

    @property
    def skipped_videos(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every video skipped so far."""
        return list(self._skips.items())

    def record_skip(self, path: str, reason: str, detail: str = "") -> None:
        """Record a skip found elsewhere (e.g. in a ``DataLoader`` worker process)."""
        self._skip(VideoSkipped(reason, path, detail))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        rng = None if self.seed is None else np.random.default_rng([int(self.seed), int(index) % len(self.rows)])
        try:
            video = read_video(
                row.path, self.frames, self.height, self.width, self.fps, rng=rng, max_pixels=self.max_pixels
            )
        except VideoSkipped as err:
            self._skip(err)
            raise
        return {"video": video, "caption": row.caption, "path": str(row.path), "index": int(index)}

    def get(self, index: int) -> dict | None:
        """``self[index]``, or ``None`` for a skipped video (logged and counted)."""
        try:
            return self[index]
        except VideoSkipped:
            return None

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            item = self.get(i)
            if item is not None:
                yield item

    def describe(self) -> dict:
        """The sampling parameters (for cache provenance)."""
        return {
            "data": str(self.root),
            "captions": str(self.captions_path),
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "seed": self.seed,
            "max_pixels": self.max_pixels,
        }
