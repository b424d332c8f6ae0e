r"""The quality / speed table of the shipped shapes models: ``python -m pyrflow_fast.shapes.results``.

Rows: held-out data (the measurement floor), conventional ``0-0-50``, pyramidal ``20-20-10``, DMD
``0-0-2`` (the conventional model distilled at full resolution), DMD-PT* ``2-2-1`` (the pyramidal
model distilled), and the undistilled conventional ``0-0-2`` and pyramidal ``2-2-1``; with
``--routes WORK/routes`` (the recipe's route steps) also every other route of the paper at ``2-2-1``
(:data:`ROUTE_ROWS`). Each model
generates one video per evaluation prompt (:func:`~pyrflow_fast.shapes.data.prompt_grid`: every
colour x shape x direction ``--repeats`` times, backgrounds in turn; seeds fixed). Columns:

- **colour / shape / direction / all**: accuracy of the pixel analyzers against the prompt
  (:mod:`pyrflow_fast.shapes.analyze`); **subject**: subject consistency; **flicker**: background
  flicker in 8-bit levels (lower is better);
- **FD**: Fréchet distance between Gaussians fitted to per-video features
  (:func:`pyrflow_fast.train.evidence.features`: per-channel mean and spread, radial power
  spectrum bands, frame-difference energy) of the generated videos and of 1000 held-out videos
  (split 2); the data row is another held-out split (1) with the same prompts;
- **GFLOPs**: analytic FLOPs of the transformer per video (:mod:`pyrflow_fast.flops`; CFG counts
  two forwards per step) and their ratio to conventional ``0-0-50``;
- **CPU s**: median wall time of :func:`pyrflow_fast.sample.generate` for one video (batch 1,
  after a warm-up, three runs) on this machine.

``±`` is one standard error: per-video values over ``sqrt(n)``; for FD the standard deviation of
100 bootstrap resamples of the generated videos.

``--figure PATH`` also writes the picture of the docs: one line per row (the held-out data first), on it
the videos of :data:`FIGURE_PROMPTS` side by side, frames left to right. ``--only ROW ...`` measures those
rows again and updates them in an earlier run's ``--json`` and ``--figure`` (:func:`update`), e.g. after
one route was rebuilt.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyrflow_ref.media import to_uint8, write_strip

from ..card import ModelCard, load_ppf
from ..flops import forward_flops, schedule_flops
from ..ppf import ppf_schedule_flops
from ..train.evidence import features, frechet_distance
from . import ROUTES, SHIPPED, model_dir
from .analyze import analyze_batch
from .data import FRAMES, SIZE, draw, prompt, prompt_grid, render
from .sampling import card_frames, load, sample

__all__ = [
    "FIGURE_PROMPTS",
    "ROUTE_ROWS",
    "ROWS",
    "main",
    "reference_videos",
    "run",
    "to_markdown",
    "update",
    "update_figure",
]

#: (row label, shipped model, schedule)
ROWS = (
    ("conventional 0-0-50", "conventional", "0-0-50"),
    ("pyramidal 20-20-10", "pyramidal", "20-20-10"),
    ("DMD 0-0-2", "distilled-plain", "0-0-2"),
    ("DMD-PT* 2-2-1", "distilled", "2-2-1"),
    # the undistilled models at the distilled schedules: what distillation has to beat
    ("conventional 0-0-2", "conventional", "0-0-2"),
    ("pyramidal 2-2-1", "pyramidal", "2-2-1"),
)
#: the routes that are not shipped (:data:`pyrflow_fast.shapes.ROUTES`), read from ``--routes``
ROUTE_ROWS = tuple((f"{name.upper()} 2-2-1", name, "2-2-1") for name in ROUTES)
REFERENCE_SPLIT, DATA_SPLIT, NUM_REFERENCE = 2, 1, 1000
#: indices into ``prompt_grid`` of the figure's prompts: red circle right, green square up, blue triangle
#: down, yellow circle left (every colour and direction, each shape)
FIGURE_PROMPTS = (5, 14, 35, 40)


def _quantised(videos: np.ndarray) -> torch.Tensor:
    """Videos as the dataset stores them (8-bit), back in [-1, 1]."""
    return torch.from_numpy(np.round((videos + 1) * 127.5) / 127.5 - 1).float()


def reference_videos(split: int = REFERENCE_SPLIT, num: int = NUM_REFERENCE, frames: int = FRAMES) -> torch.Tensor:
    """``num`` held-out videos of ``split``, their first ``frames`` frames, 8-bit quantised."""
    return _quantised(np.stack([render(draw(split, i), frames) for i in range(num)]))


def _fd(
    generated: torch.Tensor, ref_features: torch.Tensor, rng: np.random.Generator, boots: int = 100
) -> tuple[float, float]:
    gen = features(generated)
    value = frechet_distance(gen, ref_features)
    resampled = [frechet_distance(gen[rng.integers(0, len(gen), len(gen))], ref_features) for _ in range(boots)]
    return value, float(np.std(resampled))


def _summary(videos: torch.Tensor, prompts: list[tuple[str, str, str]], ref_features: torch.Tensor, seed: int) -> dict:
    found = analyze_batch(videos, prompts)
    n = len(found["videos"])
    out = {"n": n}
    for key in ("color_ok", "shape_ok", "direction_ok", "all_ok", "subject", "flicker"):
        values = np.array([row[key] for row in found["videos"]], dtype=np.float64)
        out[key] = (float(values.mean()), float(values.std(ddof=1) / np.sqrt(n)))
    out["fd"] = _fd(videos, ref_features, np.random.default_rng(seed))
    return out


def _cost(card: ModelCard, config, schedule: str, guided: bool) -> float:
    if card.ppf_patches:  # every stage on the full latent, with its own patch
        size = (card_frames(card), SIZE, SIZE)
        return ppf_schedule_flops(schedule, config, size, card.ppf_patches, forwards_per_step=2 if guided else 1)
    sizes = card.pyramid().shapes((1, config.in_dim, card_frames(card), SIZE, SIZE))
    per_forward = [forward_flops(config, s[2:]).total for s in sizes]
    return schedule_flops(schedule, per_forward, forwards_per_step=2 if guided else 1)


def run(
    repeats: int = 3,
    batch: int = 48,
    timing_runs: int = 3,
    seed: int = 0,
    *,
    rows: tuple[tuple[str, str, str], ...] = ROWS,
    models: str | Path = SHIPPED,
    routes: str | Path | None = None,
    num_reference: int = NUM_REFERENCE,
    figure: str | Path | None = None,
    log=print,
) -> dict:
    """Measure every row of the table; returns ``{"rows": {label: {...}}, "setup": {...}}``.

    :param rows: ``(label, model, schedule)`` per row; the first is the FLOPs baseline.
    :param models: folder of the model directories (default: the shipped ones); their cards' frames, which
        the held-out videos are cut to, must agree.
    :param routes: folder of the route directories (the recipe's ``WORK/routes``): rows of :data:`ROUTES`
        models are read there.
    :param figure: where to write the picture of :data:`FIGURE_PROMPTS` (PNG), if anywhere.
    """
    grid = prompt_grid(repeats)
    texts = [prompt(*g) for g in grid]
    asked = [(c, s, d) for c, s, d, _ in grid]

    def root(name: str) -> Path:
        if name in ROUTES and routes is None:
            raise ValueError(f"row of route {name!r}: pass routes=, the folder the recipe's route steps wrote")
        return Path(routes if name in ROUTES else models)

    frames = {name: card_frames(ModelCard.load(model_dir(name, root(name)))) for _, name, _ in rows}
    if len(set(frames.values())) != 1:
        raise ValueError(f"the rows' models sample different numbers of frames {frames}: measure them apart")
    num_frames = frames[rows[0][1]]
    ref_features = features(reference_videos(num=num_reference, frames=num_frames))
    measured: dict[str, dict] = {}
    start = time.perf_counter()
    data = _quantised(
        np.stack(
            [
                render(draw(DATA_SPLIT, i, color=c, shape=s, direction=d, background=b), num_frames)
                for i, (c, s, d, b) in enumerate(grid)
            ]
        )
    )
    measured["held-out data"] = _summary(data, asked, ref_features, seed)
    shown = {"held-out data": data[list(FIGURE_PROMPTS)]}
    log(f"[{time.perf_counter() - start:6.1f} s] held-out data")
    for label, name, schedule in rows:
        card, components = load(name, root(name))
        ppf = load_ppf(model_dir(name, root(name)), components.transformer, card) if card.ppf_patches else None
        videos = []
        for k in range(0, len(texts), batch):
            result = sample(components, card, texts[k : k + batch], schedule, seed + k, ppf=ppf)
            videos.append(result.video)
        videos = torch.cat(videos)
        shown[label] = videos[list(FIGURE_PROMPTS)]
        row = _summary(videos, asked, ref_features, seed)
        guided = result.info["guidance_scale"] != 1.0
        row["gflops"] = _cost(card, components.transformer.config, schedule, guided) / 1e9
        row["guidance"] = result.info["guidance_scale"]
        # the first run warms up
        times = [
            sample(components, card, texts[r % len(texts)], schedule, seed + r, ppf=ppf).seconds
            for r in range(timing_runs + 1)
        ]
        row["cpu_s"] = float(np.median(times[1:]))
        measured[label] = row
        log(
            f"[{time.perf_counter() - start:6.1f} s] {label}: all {row['all_ok'][0]:.3f}, FD {row['fd'][0]:.3f}, "
            f"{row['gflops']:.1f} GFLOPs, {row['cpu_s']:.3f} s"
        )
    if figure is not None:
        # one line per row, the prompts' videos side by side
        lines = [np.concatenate([to_uint8(video.numpy()) for video in shown[label]]) for label in shown]
        write_strip(lines, Path(figure), columns=len(FIGURE_PROMPTS) * num_frames, scale=2)
    base = measured[rows[0][0]]["gflops"]
    for label, *_ in rows:
        measured[label]["flops_ratio"] = measured[label]["gflops"] / base
    setup = {
        "repeats": repeats,
        "videos_per_row": len(texts),
        "reference_videos": num_reference,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"rows": measured, "setup": setup}


def to_markdown(results: dict) -> str:
    """The table as Markdown (``value ± standard error``)."""

    def pm(v, digits=3):
        return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"

    head = (
        "| row | colour | shape | direction | all | subject | flicker | FD "
        "| GFLOPs / video | FLOPs ratio | CPU s / video |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for label, r in results["rows"].items():
        cost = (f"{r['gflops']:.1f}", f"{r['flops_ratio']:.3f}", f"{r['cpu_s']:.3f}") if "gflops" in r else ("", "", "")
        lines.append(
            f"| {label} | {pm(r['color_ok'], 2)} | {pm(r['shape_ok'], 2)} | {pm(r['direction_ok'], 2)} "
            f"| {pm(r['all_ok'], 2)} "
            f"| {pm(r['subject'], 3)} | {pm(r['flicker'], 2)} | {pm(r['fd'], 3)} | {' | '.join(cost)} |"
        )
    return "\n".join(lines) + "\n"


def update(old: dict, new: dict) -> dict:
    """``old`` results with the rows of ``new`` measured again (``--only``): its rows in their order, the FLOPs
    ratios against its first costed row, and ``setup["updates"]`` listing the re-measured rows and their setup."""
    unknown = sorted(set(new["rows"]) - set(old["rows"]))
    if unknown:
        raise ValueError(f"rows {unknown} are not in the results to update; measure every row once first")
    rows = {
        label: new["rows"].get(label, row) if label != "held-out data" else row for label, row in old["rows"].items()
    }
    base = next(r["gflops"] for r in rows.values() if "gflops" in r)
    for r in rows.values():
        if "gflops" in r:
            r["flops_ratio"] = r["gflops"] / base
    measured = [label for label in new["rows"] if label != "held-out data"]
    setup = {**old["setup"], "updates": [*old["setup"].get("updates", []), {"rows": measured, **new["setup"]}]}
    return {"rows": rows, "setup": setup}


def update_figure(path: Path, labels: list[str], new: Path, new_labels: list[str]) -> None:
    """Redraw, in the figure at ``path`` (one line per label of ``labels``), the lines of ``new_labels[1:]`` with
    those of the figure ``new`` (one line per label of ``new_labels``, the held-out data first)."""
    from PIL import Image

    old, part = np.asarray(Image.open(path).convert("RGB")).copy(), np.asarray(Image.open(new).convert("RGB"))
    height = part.shape[0] // len(new_labels)
    if old.shape[0] != height * len(labels) or old.shape[1] != part.shape[1]:
        raise ValueError(f"{path}: {old.shape[:2]} is not {len(labels)} lines of {part.shape[:2]} / {len(new_labels)}")
    for k, label in enumerate(new_labels[1:], start=1):
        i = labels.index(label)
        old[i * height : (i + 1) * height] = part[k * height : (k + 1) * height]
    Image.fromarray(old).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pyrflow_fast.shapes.results",
        description="Measure the quality / speed table of the shipped shapes models.",
    )
    ap.add_argument("--repeats", type=int, default=3, help="videos per colour x shape x direction (48 each)")
    ap.add_argument("--batch", type=int, default=48, help="videos per generate() call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--figure", type=Path, default=None, help="also write the picture of the docs (PNG)")
    ap.add_argument("--models", type=Path, default=SHIPPED, help="folder of the model directories (default: shipped)")
    ap.add_argument(
        "--routes",
        type=Path,
        default=None,
        help="also the rows of the routes that are not shipped, from this folder (the recipe's WORK/routes)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        choices=[label for label, *_ in ROWS + ROUTE_ROWS],
        help="measure only these rows (labels as in the table) and update them in --json, which holds every row "
        "from an earlier run, and their lines in --figure",
    )
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        ap.error("--repeats and --batch must be >= 1")
    rows = ROWS + (ROUTE_ROWS if args.routes else ())
    if args.only:
        if args.json is None or not args.json.is_file():
            ap.error("--only updates the rows of an earlier run: pass its results as --json")
        rows = tuple(row for row in ROWS + ROUTE_ROWS if row[0] in args.only)
    partial = args.figure.with_suffix(".part.png") if args.only and args.figure else None
    results = run(
        args.repeats,
        args.batch,
        seed=args.seed,
        rows=rows,
        models=args.models,
        routes=args.routes,
        figure=partial or args.figure,
        log=lambda m: print(m, file=sys.stderr),
    )
    if args.only:
        old = json.loads(args.json.read_text())
        try:
            results = update(old, results)
        except ValueError as e:
            ap.error(f"--json {args.json}: {e}")
        if partial is not None:
            update_figure(args.figure, list(old["rows"]), partial, ["held-out data", *(r[0] for r in rows)])
            partial.unlink()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(to_markdown(results), end="")
    print(
        f"\n{results['setup']['videos_per_row']} videos per row; {results['setup']['machine']}; "
        f"{results['setup']['seconds']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
