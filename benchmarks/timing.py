"""Timing helpers shared by bench_e2e.py, bench_ops.py and gpu.py: A/B alternation, and a random-weight Wan.

:class:`Bench` holds a random-weight :class:`pyrflow_fast.wan.WanDiT` behind
:class:`pyrflow_fast.contract.WanBackbone`, built directly on its device in its dtype, sampled
through :func:`pyrflow_fast.samplers.sample_euler` (CFG: one batched forward of both branches per
step) or :func:`pyrflow_fast.samplers.sample_few_step`; only the sampler loop is timed (no text
encoder, no VAE). FLOPs come from :mod:`pyrflow_fast.flops` for the same shapes. Every comparison
alternates its two sides round by round (:func:`alternate`) and reports the median of the per-round
ratios (:func:`ratio`), so load drift on a shared machine cancels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from pyrflow_fast.card import latent_pyramid
from pyrflow_fast.contract import WanBackbone
from pyrflow_fast.flops import forward_flops, schedule_flops
from pyrflow_fast.samplers import guided, sample_euler, sample_few_step
from pyrflow_fast.wan import WanConfig, WanDiT
from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows


def build_model(config: WanConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> WanDiT:
    """A random-weight WanDiT made directly on ``device`` in ``dtype``: parameters are created on the
    meta device, cast there (bf16 via :meth:`~pyrflow_fast.wan.WanDiT.to_mixed_precision`), then
    allocated on ``device`` and initialised in place, so no float32 copy is ever materialised. Biases that
    ``init_weights`` leaves to the constructors (patch embedding, ``norm3``) are zero."""
    with torch.device("meta"):
        model = WanDiT(config)
    if dtype != torch.float32:
        model.to_mixed_precision(dtype)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():  # to_empty leaves garbage where init_weights relies on the constructors' defaults
        for p in model.parameters():
            p.zero_()
    model.init_weights()
    with torch.no_grad():  # random values where Wan's init leaves constants; the head gives the output signal
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.copy_(torch.randn_like(p, dtype=torch.float32) / config.dim**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
        model.head.head.weight.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


@dataclass
class Bench:
    """A random-weight backbone and a stage-0 latent size, ready to time schedules.

    :param dtype: the weights' dtype; bf16 weights keep Wan's float32 parameters
        (:meth:`~pyrflow_fast.wan.WanDiT.to_mixed_precision`) and run without autocast.
    """

    config: WanConfig
    size: tuple[int, int, int]
    device: torch.device
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        self.model = build_model(self.config, self.device, self.dtype)
        self.backbone = WanBackbone(self.model)
        self.pyramid = latent_pyramid("haar", (2, 2, 2), 3)  # the pyramid generate samples Wan with
        self.windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
        self.shapes = [s[1:] for s in self.pyramid.shapes((1, self.config.in_dim, *self.size))]
        gen = torch.Generator().manual_seed(0)
        self.context = torch.randn(1, self.config.text_len, self.config.text_dim, generator=gen).to(self.device)
        self.uncond = torch.zeros_like(self.context)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def forward_inputs(self, stage: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, t, context)`` for one backbone forward at ``stage``."""
        gen = torch.Generator().manual_seed(stage)
        x = torch.randn(batch, *self.shapes[stage], generator=gen).to(self.device)
        t = torch.full((batch, self.shapes[stage][1]), 500.0, device=self.device)
        return x, t, self.context.expand(batch, -1, -1)

    @torch.no_grad()
    def forward(self, stage: int) -> torch.Tensor:
        """One backbone forward at ``stage`` (batch 1)."""
        return self.backbone(*self.forward_inputs(stage))

    @torch.no_grad()
    def forward_seconds(self, stage: int, repeats: int = 3) -> float:
        """Median time of one backbone forward at ``stage`` (after one untimed call)."""
        inputs = self.forward_inputs(stage)
        return median_seconds(lambda: self.backbone(*inputs), self.sync, repeats)

    @torch.no_grad()
    def sample(self, schedule: str, guidance: float | None) -> torch.Tensor:
        """One sampling run (Euler with CFG when ``guidance`` is set, else few-step), text K/V cached."""
        plan = Plan.build(schedule, self.pyramid, self.windows, shift=5.0)
        gen = torch.Generator(self.device).manual_seed(0)
        noise = torch.randn((1, *self.shapes[plan.top]), generator=gen, device=self.device)
        with self.model.text_cache():
            if guidance is None:
                return sample_few_step(
                    self.backbone, noise, self.pyramid, self.windows, plan, cond=self.context, shift=5.0, rng=gen
                )
            model = guided(self.backbone, guidance, uncond=self.uncond)
            return sample_euler(model, noise, self.pyramid, self.windows, plan, cond=self.context, shift=5.0, rng=gen)

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


def alternate(
    fns: Mapping[str, Callable[[], object]], sync: Callable[[], None], rounds: int, warmup: bool = True
) -> dict[str, list[float]]:
    """Wall times of every function, one call each per round, the order reversed every other round
    (A B, B A, A B ...), so that drifting machine load hits every function alike. Returns
    ``{name: [seconds per round]}``; with ``warmup`` each function runs once first, untimed."""
    names = list(fns)
    if warmup:
        for name in names:
            fns[name]()
        sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: Mapping[str, Sequence[float]], a: str, b: str) -> float:
    """Median over rounds of ``time[a] / time[b]`` (each round's pair ran back to back)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def compare(
    bench: Bench, pairs: Sequence[tuple[str, str, float | None]], repeats: int = 2, warmup: bool = True
) -> list[dict]:
    """For each (pyramidal, plain, guidance) pair: both times (``repeats`` alternated rounds,
    :func:`alternate`), the median per-round wall ratio and the FLOPs."""
    rows = []
    for pyramidal, plain, guidance in pairs:
        runs = {
            key: (lambda s=schedule, g=guidance: bench.sample(s, g))
            for key, schedule in (("pyramidal", pyramidal), ("plain", plain))
        }
        times = alternate(runs, bench.sync, max(repeats, 1), warmup)
        row = {"pyramidal": pyramidal, "plain": plain, "guidance": guidance}
        for key, schedule in (("pyramidal", pyramidal), ("plain", plain)):
            row[f"{key}_s"] = statistics.median(times[key])
            row[f"{key}_tflops"] = bench.schedule_tflops(schedule, guidance)
        row["wall_ratio"] = ratio(times, "pyramidal", "plain")
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
            f"| {r['pyramidal']} | {r['plain']} | {r['guidance'] or 'none'} "
            f"| {r['pyramidal_s']:.3f} | {r['plain_s']:.3f} | "
            f"{r['wall_ratio']:.3f} | {r['pyramidal_tflops']:.4g} | {r['plain_tflops']:.4g} | {r['flops_ratio']:.3f} |"
        )
    return "\n".join(lines)
