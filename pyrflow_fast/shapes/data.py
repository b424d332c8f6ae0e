r"""The *shapes* text-to-video dataset: a coloured shape moving in a named direction over a photo.

Every video is ``F = 9`` frames of ``32 x 32`` RGB pixels. A square, circle or triangle (side or
diameter 8 to 12 pixels) in red, green, blue or yellow moves left, right, up or down at 1.25 to 2
pixels per frame over a static background: a random crop of one of ten natural photos bundled
with scikit-image, desaturated, dimmed and slightly blurred so that the object is the only
saturated thing in the frame (which is what lets :mod:`pyrflow_fast.shapes.analyze` find it from pixels). Shapes are
rendered with 4 x 4 supersampling, so motion is sub-pixel smooth.

The prompt names everything: ``"a red circle moving left over grass"``. A video depends only on
``(seed, index)`` (``numpy.random.default_rng([seed, index])``), so splits are seeds.

>>> v = render(Video(color="red", shape="circle", direction="left", background="grass", size=10.0,
...                  speed=1.5, start=(20.0, 16.0), crop=(0.0, 0.0, 1.0)))
>>> v.shape, v.dtype, bool(v.min() >= -1 and v.max() <= 1)
((3, 9, 32, 32), dtype('float32'), True)
>>> draw(0, 3).prompt == draw(0, 3).prompt
True
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "FPS",
    "FRAMES",
    "SHAPES",
    "SIZE",
    "Video",
    "check_ranges",
    "draw",
    "main",
    "prompt",
    "prompt_grid",
    "render",
    "write_dataset",
    "write_video_file",
]

FRAMES = 9
SIZE = 32
FPS = 8
#: RGB in [0, 1]; saturated, so that their chroma (max - min) is at least 0.75.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.10),
    "green": (0.10, 0.85, 0.10),
    "blue": (0.15, 0.25, 1.00),
    "yellow": (0.95, 0.90, 0.10),
}
SHAPES = ("square", "circle", "triangle")
#: Unit motion in image coordinates (x to the right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: Prompt word -> scikit-image ``skimage.data`` photo.
BACKGROUNDS: dict[str, str] = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "cat": "chelsea",
    "rocket": "rocket",
    "cameraman": "camera",
    "coins": "coins",
    "moon": "moon",
    "grass": "grass",
    "gravel": "gravel",
    "brick": "brick",
}
_SUPER = 4  # supersampling per axis
#: objects of 12-16 px (3-4 tokens of 4 x 4 pixels a side) moving 1.25-1.75 px per frame: large enough for
#: the shapes model's patches to tell a shape (docs/shapes.md)
SIZE_RANGE = (12.0, 16.0)
SPEED_RANGE = (1.25, 1.75)


@dataclass(frozen=True)
class Video:
    """Everything that fixes one video.

    :param size: side (square, triangle base and height) or diameter (circle) in pixels.
    :param speed: pixels per frame along ``direction``.
    :param start: ``(x, y)`` centre of the shape's bounding box in frame 0, pixels.
    :param crop: ``(top, left, side)`` of the background crop as fractions of the photo's height,
        width and shorter side.
    """

    color: str
    shape: str
    direction: str
    background: str
    size: float
    speed: float
    start: tuple[float, float]
    crop: tuple[float, float, float]

    @property
    def prompt(self) -> str:
        return prompt(self.color, self.shape, self.direction, self.background)


def prompt(color: str, shape: str, direction: str, background: str) -> str:
    """The caption of a video: ``"a red circle moving left over grass"``."""
    return f"a {color} {shape} moving {direction} over {background}"


@cache
def _photo(name: str) -> np.ndarray:
    """The scikit-image photo as float RGB ``(h, w, 3)`` in [0, 1]."""
    import skimage.data

    img = getattr(skimage.data, BACKGROUNDS[name])()
    img = np.asarray(img, dtype=np.float64) / (255.0 if img.dtype == np.uint8 else 1.0)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _background(name: str, crop: tuple[float, float, float]) -> np.ndarray:
    """Desaturated, dimmed, softened ``(SIZE, SIZE, 3)`` crop: chroma at most 0.15, values in
    [0.15, 0.75], blurred with a 0.8-pixel Gaussian (photo texture finer than that is noise to a
    model of this size)."""
    from PIL import Image, ImageFilter

    img = _photo(name)
    h, w = img.shape[:2]
    side = max(8, int(round(crop[2] * min(h, w))))
    top = int(round(crop[0] * (h - side)))
    left = int(round(crop[1] * (w - side)))
    patch = (img[top : top + side, left : left + side] * 255).round().astype(np.uint8)
    small = Image.fromarray(patch).resize((SIZE, SIZE), Image.LANCZOS).filter(ImageFilter.GaussianBlur(0.8))
    small = np.asarray(small, dtype=np.float64) / 255
    luma = small @ np.array([0.299, 0.587, 0.114])
    muted = luma[..., None] + 0.25 * (small - luma[..., None])
    return 0.15 + 0.6 * np.clip(muted, 0.0, 1.0)


def _coverage(shape: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Fraction of each pixel covered by the shape centred at ``(cx, cy)`` (bounding-box centre)."""
    n = SIZE * _SUPER
    coords = (np.arange(n) + 0.5) / _SUPER
    x, y = coords[None, :], coords[:, None]
    r = size / 2
    if shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif shape == "triangle":  # apex up, base at the bottom, height = base = size
        depth = y - (cy - r)
        inside = (depth >= 0) & (depth <= size) & (np.abs(x - cx) <= depth / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(SIZE, _SUPER, SIZE, _SUPER).mean(axis=(1, 3))


def render(video: Video, frames: int = FRAMES) -> np.ndarray:
    """The first ``frames`` frames of the video as float32 ``(3, frames, SIZE, SIZE)`` in ``[-1, 1]``."""
    bg = _background(video.background, video.crop)
    color = np.array(COLORS[video.color])
    dx, dy = DIRECTIONS[video.direction]
    out = []
    for f in range(frames):
        cx = video.start[0] + dx * video.speed * f
        cy = video.start[1] + dy * video.speed * f
        alpha = _coverage(video.shape, cx, cy, video.size)[..., None]
        out.append(bg * (1 - alpha) + color * alpha)
    return (np.stack(out).transpose(3, 0, 1, 2) * 2 - 1).astype(np.float32)


def _place(rng: np.random.Generator, size: float, travel: float, sign: int) -> float:
    """Start coordinate along the motion axis so that the whole path stays inside the frame."""
    lo, hi = size / 2 + 0.5, SIZE - size / 2 - 0.5
    first = rng.uniform(lo, hi - travel)
    return first if sign > 0 else first + travel


def check_ranges(size_range: tuple[float, float], speed_range: tuple[float, float]) -> None:
    """Raise ValueError unless every object of ``size_range`` moving at ``speed_range`` for ``FRAMES`` frames
    stays inside the frame (the largest object at the largest speed needs ``hi + 1 + 8 * speed <= SIZE``)."""
    if not 1.0 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be (lo, hi) with 1 <= lo <= hi pixels, got {size_range}")
    if not 0.0 <= speed_range[0] <= speed_range[1]:
        raise ValueError(f"speed_range must be (lo, hi) with 0 <= lo <= hi pixels per frame, got {speed_range}")
    need = size_range[1] + 1 + speed_range[1] * (FRAMES - 1)
    if need > SIZE:
        raise ValueError(
            f"a {size_range[1]:g}-pixel object moving {speed_range[1]:g} pixels per frame for {FRAMES} frames needs "
            f"{need:g} pixels, the frame has {SIZE}: lower size_range or speed_range"
        )


def draw(
    seed: int,
    index: int,
    *,
    color: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
    background: str | None = None,
    size_range: tuple[float, float] = SIZE_RANGE,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> Video:
    """Video ``index`` of split ``seed``; the named attributes are fixed, the others drawn (object side or
    diameter uniform in ``size_range`` pixels, speed in ``speed_range`` pixels per frame; the defaults are the
    shipped models' data)."""
    check_ranges(size_range, speed_range)
    rng = np.random.default_rng([seed, index])
    color = color or str(rng.choice(list(COLORS)))
    shape = shape or str(rng.choice(SHAPES))
    direction = direction or str(rng.choice(list(DIRECTIONS)))
    background = background or str(rng.choice(list(BACKGROUNDS)))
    size = rng.uniform(*size_range)
    speed = rng.uniform(*speed_range)
    travel = speed * (FRAMES - 1)
    dx, dy = DIRECTIONS[direction]
    along = _place(rng, size, travel, dx + dy)
    across = rng.uniform(size / 2 + 0.5, SIZE - size / 2 - 0.5)
    start = (along, across) if dx else (across, along)
    crop = (rng.uniform(), rng.uniform(), rng.uniform(0.5, 1.0))
    return Video(
        color,
        shape,
        direction,
        background,
        float(size),
        float(speed),
        (float(start[0]), float(start[1])),
        tuple(float(c) for c in crop),
    )


def prompt_grid(repeats: int = 1) -> list[tuple[str, str, str, str]]:
    """Balanced evaluation prompts: every (colour, shape, direction) ``repeats`` times, backgrounds in turn."""
    grid = [(c, s, d) for _ in range(repeats) for c in COLORS for s in SHAPES for d in DIRECTIONS]
    names = list(BACKGROUNDS)
    return [(c, s, d, names[k % len(names)]) for k, (c, s, d) in enumerate(grid)]


def write_video_file(video: np.ndarray, path: Path) -> None:
    """Write ``(3, F, H, W)`` in [-1, 1] losslessly (FFV1, RGB) at :data:`FPS`."""
    import av

    from pyrflow_ref.media import to_uint8

    frames = to_uint8(video)
    # bit-exact muxing: Matroska otherwise writes random segment IDs, so equal clips differ in bytes
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "bgr0"
        stream.codec_context.thread_count = 1
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def write_dataset(
    out: str | Path,
    num: int,
    seed: int = 0,
    progress: bool = True,
    *,
    size_range: tuple[float, float] = SIZE_RANGE,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> Path:
    """Write ``num`` videos of split ``seed`` (object sizes and speeds as :func:`draw`'s) as
    ``out/videos/NNNNNN.mkv`` and ``out/captions.csv`` (columns ``video, caption, color, shape,
    direction, background``); returns the caption file."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    indices = range(num)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"shapes split {seed}", unit="video")
    for i in indices:
        v = draw(seed, i, size_range=size_range, speed_range=speed_range)
        name = f"videos/{i:06d}.mkv"
        write_video_file(render(v), out / name)
        rows.append(
            {
                "video": name,
                "caption": v.prompt,
                "color": v.color,
                "shape": v.shape,
                "direction": v.direction,
                "background": v.background,
            }
        )
    captions = out / "captions.csv"
    with open(captions, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return captions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pyrflow_fast.shapes.data",
        description="Write the shapes text-to-video dataset (lossless .mkv clips + captions.csv).",
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--num", type=int, default=3000, help="number of videos")
    ap.add_argument(
        "--seed", type=int, default=0, help="split seed (0: training; the results use 1 and 2 as held-out splits)"
    )
    for flag, default, what in (
        ("--size-range", SIZE_RANGE, "object side / diameter in pixels"),
        ("--speed-range", SPEED_RANGE, "object speed in pixels per frame"),
    ):
        ap.add_argument(
            flag,
            type=float,
            nargs=2,
            default=list(default),
            metavar=("LO", "HI"),
            help=f"{what} (default: {default[0]:g} {default[1]:g}, the shipped models' data)",
        )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"--num must be >= 1, got {args.num}")
    try:
        check_ranges(tuple(args.size_range), tuple(args.speed_range))
    except ValueError as err:
        ap.error(str(err))
    path = write_dataset(
        args.out,
        args.num,
        args.seed,
        progress=not args.no_progress,
        size_range=tuple(args.size_range),
        speed_range=tuple(args.speed_range),
    )
    print(f"wrote {args.num} videos and {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
