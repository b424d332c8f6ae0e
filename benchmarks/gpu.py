"""Full-size Wan2.1-T2V-1.3B transformer timing on one GPU (random weights, bf16), eager and compiled.

    python benchmarks/gpu.py                     # one CUDA GPU; JSON to $OUT/gpu.json when OUT is set
    python benchmarks/gpu.py --tiny              # the same path end to end on CPU (tiny config)

The model is built in its dtype directly on the device (meta parameters, cast, then allocated
there: no float32 copy on the host). Before anything is timed, one forward of every stage shape at
batch 1 and 2 (CFG runs both branches as one batch), with and without the text K/V cache, and
every fused pyramid kernel on every stage shape run once, so neither cuDNN/cuBLAS heuristics,
Triton compilation nor torch.compile happen inside a timed region. Then, eager and with
:meth:`~pyrflow_fast.wan.WanDiT.compile_blocks`:

- per stage of the 81x448x832 pyramid (30,576 / 4,004 / 546 tokens): median forward latency, peak
  memory and achieved TFLOP/s (analytic FLOPs from :mod:`pyrflow_fast.flops`);
- the transformer time of ``20-20-10`` vs ``0-0-50`` (CFG 5) and ``2-2-1`` vs ``0-0-2``, one
  alternated round each.

It prints the device, torch / CUDA / cuDNN / Triton versions and the attention backend. Sizing on
one H100 with the paper's eager latencies (632 / 34 / 7.6 ms): per mode about 4 s of forwards and
75 s of schedules (0-0-50 with CFG is 50 batched full-resolution forwards), plus compilation (a
few minutes with ``max-autotune``): under 8 minutes in all; ``--skip-compiled`` halves it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from timing import Bench, compare, markdown

from pyrflow_fast import kernels
from pyrflow_fast.flops import forward_flops
from pyrflow_fast.wan import attention, get_config

PAIRS = [("20-20-10", "0-0-50", 5.0), ("2-2-1", "0-0-2", None)]
TINY = {"config": "tiny", "device": "cpu", "size": (5, 8, 8), "repeats": 1, "dtype": "float32"}


def versions(device: torch.device) -> dict:
    """Device name and the versions of the libraries whose kernels run."""
    info = {"device": "cpu", "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None, "triton": None}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def warm_up(bench: Bench) -> float:
    """Every stage shape at batch 1 and 2 through the model (with and without the text K/V cache), and
    every pyramid kernel on every stage shape, once; returns the seconds it took (compilation,
    autotuning, kernel selection)."""
    start = time.perf_counter()
    with torch.no_grad():
        for stage in range(len(bench.shapes)):
            for batch in (1, 2):
                inputs = bench.forward_inputs(stage, batch)
                bench.backbone(*inputs)
                with bench.model.text_cache():  # the samplers' path: cached text K/V
                    bench.backbone(*inputs)
            x = torch.randn(1, *bench.shapes[stage], device=bench.device)
            g = torch.ones(x.shape[2], device=bench.device)
            kernels.guided_euler(x, x, x, 0.5, -0.01, g, 5.0)
            if stage > 0:  # the transition from this stage to the finer one
                level = bench.pyramid.transitions[stage - 1]
                fine = level.fine_shape(tuple(x.shape))
                kernels.haar_down(torch.randn(fine, device=bench.device), level.factors, level.first_frame)
                kernels.haar_up_noisy(x, 0.5, None, level.factors, level.first_frame, seed=0)
    bench.sync()
    return time.perf_counter() - start


def time_forwards(bench: Bench, repeats: int) -> list[dict]:
    """Per stage: median latency, peak memory and achieved TFLOP/s of one batch-1 forward."""
    rows = []
    for stage, shape in enumerate(bench.shapes):
        if bench.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bench.device)
        seconds = bench.forward_seconds(stage, repeats)
        flops = forward_flops(bench.config, shape[1:])
        peak = torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.device.type == "cuda" else None
        rows.append(
            {
                "stage": stage,
                "latent": list(shape[1:]),
                "tokens": flops.tokens,
                "ms": 1e3 * seconds,
                "tflops_per_s": flops.total / seconds / 1e12,
                "peak_gib": peak,
            }
        )
    return rows


def run_mode(bench: Bench, repeats: int, schedules: bool) -> dict:
    warm = warm_up(bench)
    out = {"warmup_s": warm, "forwards": time_forwards(bench, repeats)}
    out["schedules"] = compare(bench, PAIRS, repeats=1, warmup=False) if schedules else []
    return out


def print_mode(name: str, result: dict) -> None:
    print(f"\n### {name} (warm-up {result['warmup_s']:.1f} s, untimed)\n")
    print("| stage | latent | tokens | ms per forward | TFLOP/s | peak GiB |\n|---|---|---|---|---|---|")
    for f in result["forwards"]:
        peak = "-" if f["peak_gib"] is None else f"{f['peak_gib']:.2f}"
        latent = "x".join(map(str, f["latent"]))
        print(f"| {f['stage']} | {latent} | {f['tokens']:,} | {f['ms']:.2f} | {f['tflops_per_s']:.3g} | {peak} |")
    if result["schedules"]:
        print()
        print(markdown(result["schedules"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config on CPU, float32, small latent (end-to-end check)")
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--size", type=int, nargs=3, default=(21, 56, 104), help="stage-0 latent F H W")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per stage (after the warm-up)")
    ap.add_argument("--attention", default="auto", choices=attention.BACKENDS)
    ap.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode of compile_blocks")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --tiny: eager)")
    ap.add_argument("--skip-compiled", action="store_true", help="time eager only")
    ap.add_argument("--no-schedules", action="store_true", help="time the per-stage forwards only")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of markdown")
    args = ap.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
        args.compile_backend = args.compile_backend or "eager"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA requested but not available; use --tiny (or --device cpu) for a CPU run")
    if args.attention not in attention.available():
        ap.error(f"attention backend {args.attention!r} is not available here: {', '.join(attention.available())}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    with attention.use(args.attention):
        report = run(args, device)
    if args.json:
        print(json.dumps(report, indent=2))
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Build, warm up and time (eager, then compiled blocks); the report as a dict."""
    bench = Bench(get_config(args.config), tuple(args.size), device, getattr(torch, args.dtype))
    report = {
        **versions(device),
        "config": args.config,
        "dtype": args.dtype,
        "attention": attention.current(),
        "available_attention": attention.available(),
        "modes": {},
    }
    say = (lambda *a, **k: None) if args.json else print
    say(
        f"device: {report['device']}; torch {report['torch']}, CUDA {report['cuda']}, cuDNN {report['cudnn']}, "
        f"Triton {report['triton']}; attention {report['attention']} (available: {', '.join(attention.available())})"
    )
    say(f"config {args.config}, {args.dtype} weights, stage-0 latent {'x'.join(map(str, args.size))}")
    start = time.perf_counter()
    report["modes"]["eager"] = run_mode(bench, args.repeats, not args.no_schedules)
    if not args.json:
        print_mode("eager", report["modes"]["eager"])
    if not args.skip_compiled:
        mode = None if args.compile_mode in ("", "none", "default") else args.compile_mode
        extra = {} if args.compile_backend is None else {"backend": args.compile_backend}
        if extra.get("backend") not in (None, "inductor"):
            mode = None  # modes are inductor's
        bench.model.compile_blocks(mode=mode, **extra)
        report["modes"]["compiled"] = run_mode(bench, args.repeats, not args.no_schedules)
        report["compile"] = {"mode": mode, "backend": args.compile_backend or "inductor"}
        if not args.json:
            print_mode(f"compiled blocks ({mode}, {args.compile_backend or 'inductor'})", report["modes"]["compiled"])
        eager_ms = [f["ms"] for f in report["modes"]["eager"]["forwards"]]
        compiled_ms = [f["ms"] for f in report["modes"]["compiled"]["forwards"]]
        report["compiled_over_eager"] = [c / e for c, e in zip(compiled_ms, eager_ms, strict=True)]
    report["total_s"] = time.perf_counter() - start
    if not args.json:
        ratios = ", ".join(f"{r:.3f}" for r in report.get("compiled_over_eager", []))
        print(f"\ntotal {report['total_s']:.1f} s" + (f"; compiled / eager per stage: {ratios}" if ratios else ""))
    return report


if __name__ == "__main__":
    raise SystemExit(main())
