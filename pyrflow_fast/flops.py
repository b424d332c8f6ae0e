"""Analytic FLOPs of the Wan2.1 transformer per forward, and the cost of pyramidal schedules.

FLOPs are counted as in ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add of
every matrix product (linear layers, the patch-embedding convolution, attention scores ``Q K^T`` and
values ``softmax(.) V``); bias adds and all elementwise work are not counted there. The itemised
count below covers exactly those products, so it agrees with ``FlopCounterMode`` on the model
(tested); elementwise work (norms, modulation, RoPE, softmax, GELU, biases, residuals) is estimated
separately under ``elementwise`` and is not part of ``total``.

Run ``python -m pyrflow_fast.flops`` to print the per-forward cost of Wan2.1-T2V-1.3B at the paper's
three stage resolutions and the seven schedules of the paper's Table 1; ``--schedule 20-20-10``
prices other schedules (steps per stage, coarsest first) and ``--json`` prints the same data
machine-readably.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cli_help import DefaultsFormatter
from .wan.config import WanConfig, get_config

__all__ = [
    "FlopsBreakdown",
    "forward_flops",
    "latent_size",
    "schedule_flops",
    "PAPER_STAGES",
    "PAPER_TABLE1",
    "PAPER_PER_FORWARD",
    "main",
]

#: The paper's stage resolutions in pixels (frames, height, width), finest (stage 0) first.
PAPER_STAGES: tuple[tuple[int, int, int], ...] = ((81, 448, 832), (41, 224, 416), (21, 112, 208))
#: The paper's per-forward TFLOPs at those stages (finest first).
PAPER_PER_FORWARD: tuple[float, ...] = (251.83, 13.49, 1.62)
#: Table 1 of the paper: schedule -> (CFG multiplier, TFLOPs per video before the multiplier).
PAPER_TABLE1: dict[str, tuple[int, float]] = {
    "0-0-50": (2, 12592.0),
    "20-20-10": (2, 2821.0),
    "0-0-4": (1, 1007.0),
    "0-0-2": (1, 504.0),
    "2-2-2": (1, 534.0),
    "2-2-1": (1, 282.0),
    "1-1-1": (1, 267.0),
}


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs of one forward pass.

    :param items: matrix-product FLOPs by component (what ``FlopCounterMode`` counts).
    :param elementwise: estimated elementwise FLOPs by component (not counted by
        ``FlopCounterMode``; approximate; excluded from :attr:`total`).
    :param tokens: video tokens per sample.
    """

    items: dict[str, int]
    elementwise: dict[str, int] = field(default_factory=dict)
    tokens: int = 0

    @property
    def total(self) -> int:
        """Sum of :attr:`items`."""
        return sum(self.items.values())

    @property
    def elementwise_total(self) -> int:
        """Sum of :attr:`elementwise`."""
        return sum(self.elementwise.values())


def latent_size(pixels: Sequence[int], temporal_stride: int = 4, spatial_stride: int = 8) -> tuple[int, int, int]:
    """Wan-VAE latent size of a video of ``(frames, height, width)`` pixels: ``((F-1)/4+1, H/8, W/8)``.

    >>> latent_size((81, 448, 832))
    (21, 56, 104)
    """
    f, h, w = pixels
    if (f - 1) % temporal_stride or h % spatial_stride or w % spatial_stride:
        raise ValueError(f"{tuple(pixels)} is not a valid Wan-VAE input size (F = 4k + 1, H, W multiples of 8)")
    return (f - 1) // temporal_stride + 1, h // spatial_stride, w // spatial_stride


def forward_flops(
    config: WanConfig | str,
    size: Sequence[int],
    batch: int = 1,
    text_len: int | None = None,
) -> FlopsBreakdown:
    """Analytic FLOPs of one ``WanDiT`` forward on latents of size ``(F, H, W)``.

    The time MLP is evaluated once per frame (``WanDiT`` embeds per-frame timesteps), the text MLP
    and the cross-attention keys/values on ``text_len`` tokens (default ``config.text_len``: Wan pads
    the text to 512 tokens and attends to all of them).
    """
    cfg = get_config(config)
    f, h, w = size
    pt, ph, pw = cfg.patch_size
    if f % pt or h % ph or w % pw:
        raise ValueError(f"latent size {tuple(size)} is not divisible by the patch {cfg.patch_size}")
    frames = f // pt
    n = frames * (h // ph) * (w // pw)  # tokens
    s = cfg.text_len if text_len is None else text_len
    d, ff, layers, heads = cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads
    b = batch
    mm = 2 * b  # 2 FLOPs per multiply-add, per sample
    items = {
        "patch_embedding": mm * n * cfg.in_dim * cfg.patch_volume * d,
        "text_embedding": mm * s * (cfg.text_dim * d + d * d),
        "time_embedding": mm * frames * (cfg.freq_dim * d + d * d + d * 6 * d),
        "self_attn.qkvo": layers * mm * n * 4 * d * d,
        "self_attn.scores": layers * mm * n * n * d,
        "self_attn.values": layers * mm * n * n * d,
        "cross_attn.q_o": layers * mm * n * 2 * d * d,
        "cross_attn.text_kv": layers * mm * s * 2 * d * d,
        "cross_attn.scores": layers * mm * n * s * d,
        "cross_attn.values": layers * mm * n * s * d,
        "ffn": layers * mm * n * 2 * d * ff,
        "head": mm * n * d * cfg.out_dim * cfg.patch_volume,
    }
    # Rough elementwise estimates (FLOPs per element in brackets), per sample times b.
    nd = n * d
    elementwise = {
        "layer_norms": b * 5 * ((3 * layers + 1) * nd),  # [5] norm1, norm3, norm2 per block, head norm
        "qk_rms_norms": b * 4 * layers * (3 * nd + s * d),  # [4] SA q, k; CA q (tokens), CA k (text)
        "modulation": b * 3 * (2 * layers + 1) * nd,  # [3] x * (1 + scale) + shift
        "gated_residuals": b * (2 * 2 + 1) * layers * nd,  # [2] x + y * gate (SA, FFN), [1] CA residual
        "rope": b * 3 * layers * 2 * nd,  # [3] per rotated element of q and k
        "softmax": b * 5 * layers * heads * (n * n + n * s),  # [5] scale, max, exp, sum, divide
        "gelu": b * 8 * (layers * n * ff + s * d),  # [8] tanh-GELU in FFN and text MLP
        "biases": b * (layers * (n * (7 * d + ff) + 2 * s * d) + n * (d + cfg.out_dim * cfg.patch_volume) + 2 * s * d),
    }
    return FlopsBreakdown(items=items, elementwise=elementwise, tokens=n)


def schedule_flops(schedule: str | Sequence[int], per_forward: Sequence[float], forwards_per_step: int = 1) -> float:
    """Cost of a schedule: ``forwards_per_step * sum_i n_i * per_forward_i``.

    :param schedule: steps per stage, coarsest first: a string ``"20-20-10"`` (parsed by
        :func:`pyrflow_ref.windows.parse_schedule`) or a sequence of ints.
    :param per_forward: cost of one forward per stage, **finest (stage 0) first**.
    :param forwards_per_step: forwards per step (2 with classifier-free guidance).

    >>> schedule_flops("2-2-1", [100.0, 10.0, 1.0])
    122.0
    """
    if isinstance(schedule, str):
        from pyrflow_ref.windows import parse_schedule

        steps = parse_schedule(schedule, num_stages=len(per_forward))
    else:
        steps = tuple(int(n) for n in schedule)
        if len(steps) != len(per_forward) or any(n < 0 for n in steps):
            raise ValueError(f"schedule {schedule!r} must be {len(per_forward)} non-negative step counts")
    return forwards_per_step * sum(n * c for n, c in zip(reversed(steps), per_forward, strict=True))


# ------------------------------------------------------------------------------------ CLI
def _report(config: str, stages: Sequence[Sequence[int]], schedules: Sequence[tuple[str, int]]) -> dict:
    per_stage = []
    for i, pixels in enumerate(stages):
        size = latent_size(pixels)
        br = forward_flops(config, size)
        per_stage.append(
            {
                "stage": i,
                "pixels": list(pixels),
                "latent": list(size),
                "tokens": br.tokens,
                "tflops": br.total / 1e12,
                "items_tflops": {k: v / 1e12 for k, v in br.items.items()},
                "elementwise_tflops_approx": {k: v / 1e12 for k, v in br.elementwise.items()},
            }
        )
    if list(map(tuple, stages)) == list(PAPER_STAGES):
        for s, paper in zip(per_stage, PAPER_PER_FORWARD, strict=True):
            s["paper_tflops"] = paper
            s["rel_err"] = s["tflops"] / paper - 1
    costs = [s["tflops"] for s in per_stage]
    rows = []
    for sched, mult in schedules:
        row = {
            "schedule": sched,
            "forwards_per_step": mult,
            "tflops": schedule_flops(sched, costs, forwards_per_step=mult),
        }
        paper = PAPER_TABLE1.get(sched)
        if paper is not None and paper[0] == mult and list(map(tuple, stages)) == list(PAPER_STAGES):
            row["paper_tflops"] = paper[0] * paper[1]
            row["rel_err"] = row["tflops"] / row["paper_tflops"] - 1
        rows.append(row)
    return {"config": config, "batch": 1, "stages": per_stage, "schedules": rows}


def _print(rep: dict) -> None:
    stages = rep["stages"]
    print(f"{rep['config']}: analytic FLOPs per forward (batch 1, {get_config(rep['config']).text_len} text tokens)")
    print()
    print(f"{'stage':>5}  {'pixels':>12}  {'latent':>10}  {'tokens':>7}  {'TFLOPs':>9}  {'paper':>7}  {'rel.err':>8}")
    for s in stages:
        px = "x".join(map(str, s["pixels"]))
        lt = "x".join(map(str, s["latent"]))
        paper, err = "-", "-"
        if "paper_tflops" in s:
            paper, err = f"{s['paper_tflops']:.2f}", f"{100 * s['rel_err']:+.3f}%"
        print(f"{s['stage']:>5}  {px:>12}  {lt:>10}  {s['tokens']:>7,}  {s['tflops']:>9.2f}  {paper:>7}  {err:>8}")
    print()
    head = "".join(f"{'stage ' + str(s['stage']):>10}" for s in stages)
    print(f"{'itemised TFLOPs':<22}{head}")
    for key in stages[0]["items_tflops"]:
        vals = "".join(f"{s['items_tflops'][key]:>10.4f}" for s in stages)
        print(f"{key:<22}{vals}")
    print(f"{'total':<22}" + "".join(f"{s['tflops']:>10.4f}" for s in stages))
    print()
    print("not counted above (elementwise, approximate):")
    for key in stages[0]["elementwise_tflops_approx"]:
        vals = "".join(f"{s['elementwise_tflops_approx'][key]:>10.4f}" for s in stages)
        print(f"{key:<22}{vals}")
    print()
    print("schedule cost, TFLOPs per video (steps per stage coarsest first; CFG doubles the forwards)")
    print(f"{'schedule':>10}  {'fwd/step':>8}  {'TFLOPs':>10}  {'paper':>14}  {'rel.err':>8}")
    for r in rep["schedules"]:
        if "paper_tflops" in r:
            p = PAPER_TABLE1[r["schedule"]]
            paper = f"{p[0]} x {p[1]:.0f}" if p[0] > 1 else f"{p[1]:.0f}"
            err = f"{100 * r['rel_err']:+.3f}%"
        else:
            paper, err = "-", "-"
        print(f"{r['schedule']:>10}  {r['forwards_per_step']:>8}  {r['tflops']:>10.1f}  {paper:>14}  {err:>8}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyrflow_fast.flops``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="pyrflow-flops",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("--config", default="wan2.1-t2v-1.3b", help="named Wan config")
    parser.add_argument(
        "--stages",
        default=None,
        help="pixel sizes per stage, finest first, e.g. 81x448x832,41x224x416,21x112x208 (default: the paper's)",
    )
    parser.add_argument(
        "--schedule",
        action="append",
        default=None,
        help="schedule to price, e.g. 20-20-10 (repeatable; default: the paper's table)",
    )
    parser.add_argument(
        "--guidance", action="store_true", help="with --schedule: classifier-free guidance (2 forwards/step)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    try:
        get_config(args.config)
        stages = PAPER_STAGES
        if args.stages:
            stages = tuple(tuple(int(v) for v in s.split("x")) for s in args.stages.split(","))
        if args.schedule:
            schedules = [(s, 2 if args.guidance else 1) for s in args.schedule]
        else:
            schedules = [(s, m) for s, (m, _) in PAPER_TABLE1.items()]
        rep = _report(args.config, stages, schedules)
    except (KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        _print(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
