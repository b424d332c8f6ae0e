"""Pyramid ops on a Wan-sized latent: pyrflow_ref (NumPy) vs the torch twin vs the Triton kernels.

Run with ``make bench`` (``pytest benchmarks --benchmark-enable``). Without ``--benchmark-enable``
(the default configuration) each benchmark runs its op once, as a quick smoke test. The CUDA
variants (torch twin on the GPU and the Triton kernels) are skipped without a CUDA device.
Inputs are float32 ``(1, 16, 21, 56, 104)``: Wan2.1's 81-frame 832x480 latent at stage 0.
"""

import importlib.util

import numpy as np
import pytest
import torch

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
