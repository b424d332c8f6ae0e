"""Full-size Wan2.1-T2V-1.3B transformer timing on one GPU (random weights, bf16).

    python benchmarks/gpu.py                      # on a CUDA machine
    python benchmarks/gpu.py --config tiny --device cpu --size 5 8 8 --repeats 1   # smoke test

Prints per-forward latency at the three stages of the 81x448x832 pyramid (30,576 / 4,004 / 546
tokens) and the transformer time of 0-0-50 (CFG), 20-20-10 (CFG), 0-0-2 and 2-2-1, with the
analytic TFLOPs of each, as markdown for benchmarks/RESULTS.md (JSON with --json). Sizing: with the
paper's latencies (632 / 34 / 7.6 ms per forward) the timed work is about 100 s of GPU time
(0-0-50 with CFG is 100 full-resolution forwards), well inside 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import Bench, compare, markdown

from pyrflow_fast.flops import forward_flops
from pyrflow_fast.wan import get_config

PAIRS = [("20-20-10", "0-0-50", 5.0), ("2-2-1", "0-0-2", None)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--size", type=int, nargs=3, default=(21, 56, 104), help="stage-0 latent F H W")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per stage (after one warm-up)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA requested but not available; use --device cpu for a smoke test")
    torch.backends.cuda.matmul.allow_tf32 = True
    bench = Bench(get_config(args.config), tuple(args.size), device, getattr(torch, args.dtype))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    forwards = []
    for stage, shape in enumerate(bench.shapes):
        ms = 1000 * bench.forward_seconds(stage, args.repeats)
        tokens = forward_flops(bench.config, shape[1:]).tokens
        forwards.append({"stage": stage, "latent": shape[1:], "tokens": tokens, "ms": ms})
    rows = compare(bench, PAIRS, repeats=1, warmup=False)  # the forwards above warmed up every stage shape
    if args.json:
        print(
            json.dumps(
                {"device": name, "config": args.config, "dtype": args.dtype, "forwards": forwards, "schedules": rows},
                indent=2,
            )
        )
        return 0
    print(f"device: {name}; config {args.config}; {args.dtype}; torch {torch.__version__}\n")
    print("| stage | latent | tokens | ms per forward |\n|---|---|---|---|")
    for f in forwards:
        print(f"| {f['stage']} | {'x'.join(map(str, f['latent']))} | {f['tokens']:,} | {f['ms']:.2f} |")
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
