"""Context-parallel generation on paper: per-rank FLOPs and bytes sent for each pyramid stage.

``python benchmarks/bench_parallel.py`` prints, for Wan2.1-T2V-1.3B and 14B at pyrflow's default
81 x 448 x 832 video (latent stages 21x56x104, 11x28x52, 6x14x26), 2, 4 and 8 ranks and each method,
what the busiest rank computes and sends in one forward of one sample (CFG's batched pair doubles
both): :func:`pyrflow_fast.parallel.cost.forward_cost`, whose bytes and FLOPs the gloo test counts on a
real run. ``FLOP/B`` is the rank's FLOPs per byte it sends; a split pays off while it is well above the
machine's FLOPs-per-link-byte ratio (H200 bf16 dense ~989 TFLOP/s over NVLink ~450 GB/s per direction:
~2,200), and the latency of the two all-to-alls per layer (Ulysses) or ``N - 1`` ring steps decides
the small stages. ``plan`` marks what :class:`~pyrflow_fast.parallel.ParallelPlan`'s default splits.

Options: ``--configs``, ``--ranks``, ``--frames/--height/--width`` (pixels), ``--activation-bytes``
(2: bf16, 4: float32).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyrflow_fast.flops import latent_size
from pyrflow_fast.parallel import ParallelPlan
from pyrflow_fast.parallel.cost import forward_cost
from pyrflow_fast.resample import WAN_PYRAMID
from pyrflow_fast.wan.config import get_config


def rows(configs: Sequence[str], pixels: Sequence[int], ranks: Sequence[int], activation_bytes: int) -> list[list]:
    plan = ParallelPlan()
    latent = latent_size(pixels)
    out = []
    for name in configs:
        cfg = get_config(name)
        for stage, shape in enumerate(WAN_PYRAMID.shapes((1, cfg.in_dim, *latent))):
            size = shape[2:]
            per_frame = (size[1] // cfg.patch_size[1]) * (size[2] // cfg.patch_size[2])
            for world in ranks:
                for method in ("ulysses", "ring", "replicate"):
                    if method == "ulysses" and world > cfg.num_heads:
                        continue
                    c = forward_cost(cfg, size, world, method, activation_bytes=activation_bytes)
                    chosen = plan.method_for(size, c.tokens, per_frame, world)
                    out.append([
                        name, stage, "x".join(map(str, size)), c.tokens, world, method,
                        f"{c.flops / 1e12:.2f}", f"{c.flops / c.full_flops:.3f}", f"{c.bytes_sent / 2**20:.1f}",
                        f"{c.flops / c.bytes_sent:,.0f}" if c.bytes_sent else "-", "yes" if chosen == method else "",
                    ])  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
    ap.add_argument("--ranks", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=448)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--activation-bytes", type=int, default=2)
    args = ap.parse_args(argv)
    header = ["config", "stage", "latent", "tokens", "ranks", "method", "TFLOP/rank", "of 1 GPU", "MiB sent/rank",
              "FLOP/B", "plan"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(args.configs, (args.frames, args.height, args.width), args.ranks, args.activation_bytes):
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
