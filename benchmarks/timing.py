"""Transformer time of pyramidal vs plain schedules (shared by bench_e2e.py and gpu.py).

A random-weight :class:`pyrflow_fast.wan.WanDiT` behind :class:`pyrflow_fast.contract.WanBackbone`
is sampled through :func:`pyrflow_fast.samplers.sample_euler` (CFG: two forwards per step) or
:func:`pyrflow_fast.samplers.sample_few_step`; only the sampler loop is timed (no text encoder,
no VAE). FLOPs come from :mod:`pyrflow_fast.flops` for the same shapes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pyrflow_fast.card import latent_pyramid
from pyrflow_fast.contract import WanBackbone
from pyrflow_fast.flops import forward_flops, schedule_flops
from pyrflow_fast.samplers import guided, sample_euler, sample_few_step
from pyrflow_fast.wan import WanConfig, WanDiT
from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows


@dataclass
class Bench:
    """A random-weight backbone and a stage-0 latent size, ready to time schedules."""

    config: WanConfig
    size: tuple[int, int, int]
    device: torch.device
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        torch.manual_seed(0)
        self.model = WanDiT(self.config).to(self.device, self.dtype).eval()
        with torch.no_grad():  # Wan zero-initialises the head; give the output some signal
            self.model.head.head.weight.normal_(0, 0.02)
        self.backbone = WanBackbone(self.model)
        self.pyramid = latent_pyramid("haar", (2, 2, 2), 3)  # the pyramid generate samples Wan with
        self.windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
        self.shapes = [s[1:] for s in self.pyramid.shapes((1, self.config.in_dim, *self.size))]
        gen = torch.Generator().manual_seed(0)
        self.context = torch.randn(1, self.config.text_len, self.config.text_dim, generator=gen).to(self.device)
        self.uncond = torch.zeros_like(self.context)

    def _model(self, x_nat, t, context):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.backbone(x_nat, t, context)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def forward_seconds(self, stage: int, repeats: int = 3) -> float:
        """Median time of one backbone forward at ``stage``."""
        x = torch.randn(1, *self.shapes[stage], device=self.device)
        t = torch.full((1, self.shapes[stage][1]), 500.0, device=self.device)
        return median_seconds(lambda: self._model(x, t, self.context), self.sync, repeats)

    @torch.no_grad()
    def sample(self, schedule: str, guidance: float | None) -> torch.Tensor:
        """One sampling run (Euler with CFG when ``guidance`` is set, else few-step)."""
        plan = Plan.build(schedule, self.pyramid, self.windows, shift=5.0)
        gen = torch.Generator(self.device).manual_seed(0)
        noise = torch.randn((1, *self.shapes[plan.top]), generator=gen, device=self.device)
        if guidance is None:
            return sample_few_step(
                self._model, noise, self.pyramid, self.windows, plan, cond=self.context, shift=5.0, rng=gen
            )
        model = guided(self._model, guidance, uncond=self.uncond)
        return sample_euler(model, noise, self.pyramid, self.windows, plan, cond=self.context, shift=5.0, rng=gen)

    def schedule_seconds(self, schedule: str, guidance: float | None, repeats: int = 1, warmup: bool = True) -> float:
        return median_seconds(lambda: self.sample(schedule, guidance), self.sync, repeats, warmup)

    def schedule_tflops(self, schedule: str, guidance: float | None) -> float:
        per_forward = [forward_flops(self.config, s[1:]).total / 1e12 for s in self.shapes]
        return schedule_flops(schedule, per_forward, forwards_per_step=1 if guidance is None else 2)


def median_seconds(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call if ``warmup``)."""
    if warmup:
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(
    bench: Bench, pairs: Sequence[tuple[str, str, float | None]], repeats: int = 1, warmup: bool = True
) -> list[dict]:
    """For each (pyramidal, plain, guidance) pair: both times and FLOPs, measured in this run."""
    rows = []
    for pyramidal, plain, guidance in pairs:
        row = {"pyramidal": pyramidal, "plain": plain, "guidance": guidance}
        for key, schedule in (("pyramidal", pyramidal), ("plain", plain)):
            row[f"{key}_s"] = bench.schedule_seconds(schedule, guidance, repeats, warmup)
            row[f"{key}_tflops"] = bench.schedule_tflops(schedule, guidance)
        row["wall_ratio"] = row["pyramidal_s"] / row["plain_s"]
        row["flops_ratio"] = row["pyramidal_tflops"] / row["plain_tflops"]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| pyramidal | plain | CFG | pyramidal s | plain s | wall ratio "
        "| pyramidal TFLOPs | plain TFLOPs | FLOPs ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pyramidal']} | {r['plain']} | {r['guidance'] or 'none'} | {r['pyramidal_s']:.3f} | {r['plain_s']:.3f} | "
            f"{r['wall_ratio']:.3f} | {r['pyramidal_tflops']:.4g} | {r['plain_tflops']:.4g} | {r['flops_ratio']:.3f} |"
        )
    return "\n".join(lines)
