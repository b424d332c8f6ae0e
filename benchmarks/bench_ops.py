"""Pyramid ops on a Wan-sized latent: pyrflow_ref (NumPy) vs the torch twin vs the Triton kernels,
each op against a memcpy of its bytes, and the cost of WanDiT's fused q/k/v projection.

Run with ``make bench`` (``pytest benchmarks --benchmark-enable``). Without ``--benchmark-enable``
(the default configuration) each benchmark runs its op once, as a quick smoke test. The CUDA
variants (torch twin on the GPU and the Triton kernels) are skipped without a CUDA device.
Inputs are float32 ``(1, 16, 21, 56, 104)``: Wan2.1's 81-frame 832x480 latent at stage 0.

The memcpy ratios (``test_*_vs_memcpy``, also ``python benchmarks/bench_ops.py [ROUNDS]``) alternate
the op with ``torch.empty_like(src).copy_(src)`` of a buffer whose read + written bytes equal the op's
inputs + output (the copy allocates its destination as the op allocates its output): the time a
perfectly fused op would take at copy bandwidth. They record the median per-round ratio.
"""

import importlib.util
import statistics
import sys

import numpy as np
import pytest
import torch
from timing import alternate, ratio

import pyrflow_fast.resample as fr
import pyrflow_ref.resample as rr
from pyrflow_fast import kernels
from pyrflow_ref.natural import bridge_velocity, per_frame

SHAPE = (1, 16, 21, 56, 104)
SIGMA, DSIGMA, SCALE = 0.7, -0.02, 5.0

_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not _CUDA, reason="no CUDA device")
needs_triton = pytest.mark.skipif(
    not (_CUDA and importlib.util.find_spec("triton")), reason="the Triton kernels need a CUDA device and triton"
)
IMPLS = ["ref", "torch-cpu", pytest.param("torch-cuda", marks=needs_cuda), pytest.param("triton", marks=needs_triton)]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """The implementation name; the torch variants pin the dispatcher with PYRFLOW_TRITON."""
    monkeypatch.setenv("PYRFLOW_TRITON", "1" if request.param == "triton" else "0")
    return request.param


def arrays(impl, *shapes):
    """Standard normal float32 inputs, as NumPy arrays (ref) or tensors on the implementation's device."""
    rng = np.random.default_rng(0)
    out = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    if impl == "ref":
        return out
    device = "cpu" if impl == "torch-cpu" else "cuda"
    return [torch.from_numpy(a).to(device) for a in out]


def run(benchmark, impl, fn, *args):
    """Benchmark ``fn(*args)``, synchronising CUDA so the time covers the kernels."""
    if impl in ("torch-cuda", "triton"):

        def timed(*a):
            out = fn(*a)
            torch.cuda.synchronize()
            return out

        return benchmark(timed, *args)
    return benchmark(fn, *args)


def transition(impl):
    return (rr if impl == "ref" else fr).Resampler("haar", (2, 2, 2), first_frame=True)


def test_haar_down(benchmark, impl):
    (x,) = arrays(impl, SHAPE)
    out = run(benchmark, impl, transition(impl).down, x)
    assert tuple(out.shape) == rr.WAN_PYRAMID.shapes(SHAPE)[1]


def test_up_noisy(benchmark, impl):
    r = transition(impl)
    y, w = arrays(impl, r.coarse_shape(SHAPE), SHAPE)
    out = run(benchmark, impl, r.up_noisy, y, 0.5, w)
    assert tuple(out.shape) == SHAPE


def test_guided_euler(benchmark, impl):
    x, v_c, v_u = arrays(impl, SHAPE, SHAPE, SHAPE)
    g = rr.WAN_PYRAMID.gain(0, SHAPE[-3])
    if impl == "ref":
        s, gg = per_frame(SIGMA, g)

        def step(x, v_c, v_u):  # what pyrflow_ref.samplers.sample_euler does per step
            return x + DSIGMA * bridge_velocity(x, s, gg, v_u + SCALE * (v_c - v_u))

        out = run(benchmark, impl, step, x, v_c, v_u)
    else:
        g = torch.as_tensor(g, dtype=torch.float32, device=x.device)
        out = run(benchmark, impl, kernels.guided_euler, x, v_c, v_u, SIGMA, DSIGMA, g, SCALE)
    assert tuple(out.shape) == SHAPE


# ------------------------------------------------------------------------- against memcpy
def _device():
    return "cuda" if _CUDA else "cpu"


def memcpy_cases(device: str):
    """``{op: (callable, bytes read + written)}`` on float32 Wan stage-0 inputs on ``device``."""
    gen = torch.Generator().manual_seed(0)
    r = fr.Resampler("haar", (2, 2, 2), first_frame=True)
    coarse = r.coarse_shape(SHAPE)

    def rand(shape):
        return torch.randn(shape, generator=gen).to(device)

    x, w, y, v_c, v_u = rand(SHAPE), rand(SHAPE), rand(coarse), rand(SHAPE), rand(SHAPE)
    g = torch.as_tensor(rr.WAN_PYRAMID.gain(0, SHAPE[-3]), dtype=torch.float32, device=device)
    n, nc = x.numel() * 4, y.numel() * 4
    return {
        "haar_down": (lambda: kernels.haar_down(x), n + nc),
        "up_noisy": (lambda: kernels.haar_up_noisy(y, 0.5, w), nc + 2 * n),
        "cfg_euler": (lambda: kernels.guided_euler(x, v_c, v_u, SIGMA, DSIGMA, g, SCALE), 4 * n),
    }


def memcpy_ratio(op: str, rounds: int = 20, device: str | None = None) -> float:
    """Median per-round time ratio of ``op`` to a copy moving the same bytes, alternated in one run."""
    device = device or _device()
    fn, nbytes = memcpy_cases(device)[op]
    # half the bytes read, half written, into a fresh buffer as the op allocates its output
    src = torch.empty(nbytes // 8, dtype=torch.float32, device=device).normal_()
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    times = alternate({"op": fn, "memcpy": lambda: torch.empty_like(src).copy_(src)}, sync, rounds)
    return ratio(times, "op", "memcpy")


@pytest.mark.parametrize("op", ["haar_down", "up_noisy", "cfg_euler"])
def test_op_vs_memcpy(benchmark, op):
    benchmark.group = "ops vs memcpy"
    value = benchmark.pedantic(memcpy_ratio, args=(op,), rounds=1, iterations=1)
    benchmark.extra_info["ratio_to_memcpy"] = value
    assert value > 0  # a benchmark: reported, never asserted


# ------------------------------------------------------------------- fused q/k/v projection
def qkv_cost(dim: int = 1536, tokens: int = 4004, rounds: int = 10, device: str | None = None) -> dict:
    """Time of WanDiT's q/k/v weight concatenation, and of one fused vs three separate projections,
    at the 1.3B model's width and a stage-1 token count (alternated; medians in ms and the ratios)."""
    device = device or _device()
    gen = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(dim, dim).to(device) for _ in range(3)]
    x = torch.randn(1, tokens, dim, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    @torch.no_grad()
    def fused():
        w = torch.cat([m.weight for m in layers])
        b = torch.cat([m.bias for m in layers])
        return torch.nn.functional.linear(x, w, b).split(dim, -1)

    @torch.no_grad()
    def separate():
        return [m(x) for m in layers]

    @torch.no_grad()
    def concat():
        return torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers])

    times = alternate({"fused": fused, "separate": separate, "concat": concat}, sync, rounds)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {
        **{f"{k}_ms": v for k, v in med.items()},
        "fused_over_separate": ratio(times, "fused", "separate"),
        "concat_over_separate": ratio(times, "concat", "separate"),
    }


def test_qkv_fusion_cost(benchmark):
    benchmark.group = "q/k/v projection"
    row = benchmark.pedantic(qkv_cost, kwargs={"rounds": 3}, rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    assert row["concat_ms"] > 0


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"device {_device()}, {torch.get_num_threads()} threads, {rounds} alternated rounds, float32 {SHAPE}\n")
    print("| op | time / memcpy of its bytes |\n|---|---|")
    for op in ("haar_down", "up_noisy", "cfg_euler"):
        print(f"| {op} | {memcpy_ratio(op, rounds):.2f} |")
    row = qkv_cost(rounds=max(rounds // 2, 3))
    print("\n| q/k/v at dim 1536, 4004 tokens | ms |\n|---|---|")
    for key, value in row.items():
        print(f"| {key} | {value:.3f} |")
