"""Convert a Wan2.1 transformer checkpoint between the original and the diffusers layout.

Usage::

    python -m pyrflow_fast.wan.convert SRC DST --to diffusers [--config NAME] [--max-shard-size 5GB]

``SRC`` is anything :func:`pyrflow_fast.wan.checkpoint.load_wan` reads (either layout, single or
sharded safetensors, or a ``.pth``). Loading is strict, so a conversion either succeeds completely or
stops with the list of problems. Weights keep their dtype unless ``--dtype`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cli_help import DefaultsFormatter

__all__ = ["main"]

_DTYPES = ("float32", "bfloat16", "float16")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="pyrflow-wan-convert",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("src", help="checkpoint folder or weight file in either layout")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--to", choices=("original", "diffusers"), required=True, help="layout to write")
    parser.add_argument("--config", default=None, help="named config when SRC has no config.json (default: read SRC's)")
    parser.add_argument("--max-shard-size", default=None, help="shard above this size, e.g. 5GB (default: one file)")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="cast floating weights (default: keep)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="warn instead of failing on NaN/Inf weights")
    args = parser.parse_args(argv)

    import torch

    from .checkpoint import CheckpointError, load_wan, save_wan

    try:
        model = load_wan(
            args.src,
            args.config,
            dtype=None if args.dtype is None else getattr(torch, args.dtype),
            nonfinite="warn" if args.allow_nonfinite else "raise",
        )
    except (CheckpointError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = save_wan(model, args.dst, layout=args.to, max_shard_size=args.max_shard_size)
    n = model.num_parameters()
    print(f"wrote {n:,} parameters in the {args.to} layout to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
