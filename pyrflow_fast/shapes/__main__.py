"""``python -m pyrflow_fast.shapes``: generate a video with a shipped shapes checkpoint (``make sample``).

Writes ``OUT/shapes.mp4`` (upscaled 8x, nearest) and ``OUT/shapes.png`` (the frames side by side)
and prints what the pixel analyzers measure in the result.

Run as a program it lives about 2 s, most of it importing torch, so it skips the cyclic garbage
collector while the modules import and the interpreter's teardown of them at exit (see the end of
this file); the prompt embeddings come from the shipped table, so ``transformers`` is not imported
(:func:`~pyrflow_fast.shapes.sampling.load`).
"""

# the collector is switched off before the imports below
# ruff: noqa: E402
from __future__ import annotations

import gc
import os
import sys

if __name__ == "__main__":
    gc.disable()

import argparse
import time
from pathlib import Path

import torch

from pyrflow_ref.media import to_uint8, write_strip, write_video

from ..sample import run_cli
from . import MODELS
from .analyze import analyze
from .components import all_prompts
from .data import BACKGROUNDS, COLORS, DIRECTIONS, FPS, SHAPES
from .sampling import load, sample

DEFAULT_PROMPT = "a red circle moving right over grass"
SCALE = 8


TEMPLATE = '"a <colour> <shape> moving <direction> over <background>"'
VOCABULARY = (
    f"colours {', '.join(COLORS)}; shapes {', '.join(SHAPES)}; directions {', '.join(DIRECTIONS)}; "
    f"backgrounds {', '.join(BACKGROUNDS)}"
)
_PROMPTS = frozenset(all_prompts())


def check_prompt(text: str) -> str:
    """``text`` if the shapes models were trained on it; ValueError naming the vocabulary otherwise.

    >>> check_prompt("a purple circle")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the shapes models know only prompts ... 'a purple circle' has unknown words: purple
    """
    cleaned = " ".join(text.lower().split())
    if cleaned in _PROMPTS:
        return cleaned
    known = {"a", "moving", "over", *COLORS, *SHAPES, *DIRECTIONS, *BACKGROUNDS}
    unknown = [w for w in cleaned.split() if w not in known]
    why = f"has unknown words: {', '.join(unknown)}" if unknown else "does not follow that template"
    raise ValueError(f"the shapes models know only prompts {TEMPLATE} ({VOCABULARY}); {text!r} {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pyrflow_fast.shapes", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    ap.add_argument(
        "--model", default="distilled", choices=list(MODELS), help="; ".join(f"{k}: {v}" for k, v in MODELS.items())
    )
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"{TEMPLATE}: {VOCABULARY}")
    ap.add_argument("--schedule", default=None, help="steps per stage, coarsest first (default: the checkpoint's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    return run_cli(ap, argv, _sample)


def _sample(args: argparse.Namespace) -> str:
    text = check_prompt(args.prompt)
    # one thread: a 1.2M-parameter model on <= 64 tokens spends more on thread hand-offs than on
    # arithmetic (measured 0.3-0.4 s sampling with 1 thread against 1.6-5.3 s with 2 on a loaded CPU)
    torch.set_num_threads(1)
    start = time.perf_counter()
    card, components = load(args.model)
    result = sample(components, card, [text], args.schedule, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(result.video[0].numpy())
    video = write_video(frames, args.out / "shapes.mp4", scale=SCALE, fps=FPS)
    strip = args.out / "shapes.png"
    write_strip([frames], strip, columns=len(frames), scale=SCALE)
    found = analyze(result.video[0].numpy())
    return (
        f"{args.model} ({result.sampler} {result.schedule}): {text!r}, seed {args.seed}\n"
        f"  sampling {result.seconds:.2f} s, total {time.perf_counter() - start:.2f} s; wrote {video} and {strip}\n"
        f"  measured from the pixels: {found.color} {found.shape} moving {found.direction}, "
        f"subject consistency {found.subject:.2f}, background flicker {found.flicker:.1f}/255"
    )


if __name__ == "__main__":
    # Measured on the 2-core CPU: collecting while torch & co. import (objects that live until exit) costs
    # 0.2-0.3 s, tearing their modules down at exit 0.4-0.5 s, of a run that is about 2 s. The imported
    # objects are frozen out of later collections; errors (SystemExit, tracebacks) still exit normally.
    gc.freeze()
    gc.enable()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # every output file is closed by now
