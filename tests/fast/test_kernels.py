"""The Triton kernels against their torch twins: compiled on a CUDA device, else run by Triton's interpreter on CPU.

Sizes are odd and span several programs with a partial last one, so the masks are exercised.
Kernels compute in float32: float32 agrees with the twin to 1e-6 relative; bfloat16 in and out
agrees to one bfloat16 rounding. The torch twins themselves are checked against pyrflow_ref in
test_twins.py (through the resamplers and samplers that dispatch to them) and here directly.
"""

import numpy as np
import pytest
import torch

import pyrflow_ref.resample as rr
from pyrflow_fast import kernels
from pyrflow_fast.kernels import torch_ops, triton_ops

CASES = [((2, 2, 2), True, 7), ((2, 2, 2), False, 6), ((1, 2, 2), True, 3), ((1, 2, 2), False, 3)]
SHAPE_HW = (18, 30)  # coarse 9 x 15: several HAAR_BLOCK programs, the last one partial
# tests/conftest.py sets TRITON_INTERPRET=1 only without CUDA; with CUDA the kernels compile and need GPU tensors
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def check(got, want, dtype):
    """``got``: the kernel's output; ``want``: the twin's float32 result on the same (upcast) inputs.

    float32: 1e-6 relative. bfloat16: one bfloat16 rounding of the float32 result, 2**-7 relative
    (the interpreter's float32 -> bfloat16 cast rounds toward zero, the GPU's to nearest).
    """
    assert got.dtype == dtype and got.shape == want.shape and want.dtype == torch.float32
    err, ref = (got.double() - want.double()).abs(), want.double().abs()
    bound = 1e-6 * ref.clamp(min=1.0) if dtype == torch.float32 else 2**-7 * ref + 1e-6
    assert (err <= bound).all(), f"max abs error {err.max().item():.3g}"


def test_use_triton(monkeypatch):
    x, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    monkeypatch.delenv("PYRFLOW_TRITON", raising=False)
    assert not kernels.use_triton(x)  # CPU tensor
    monkeypatch.setenv("PYRFLOW_TRITON", "1")
    assert kernels.use_triton(x) and kernels.use_triton(x.bfloat16())
    assert not kernels.use_triton(x64)  # the kernels compute in float32
    monkeypatch.setenv("PYRFLOW_TRITON", "0")
    assert not kernels.use_triton(x)
    monkeypatch.setenv("PYRFLOW_TRITON", "yes")
    with pytest.raises(ValueError, match="PYRFLOW_TRITON must be 0, 1 or unset, got 'yes'"):
        kernels.use_triton(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("factors", "first_frame", "frames"), CASES)
def test_haar_down(factors, first_frame, frames, dtype):
    x = randn((2, 3, frames, *SHAPE_HW), 0, dtype)
    transition = rr.Resampler("haar", factors, first_frame)
    coarse_frames = transition.coarse_shape(x.shape)[-3]
    gain = 1 / torch.from_numpy(transition.gain(coarse_frames)).float().to(DEVICE)
    for g in (None, gain):
        check(
            triton_ops.haar_down(x, factors, first_frame, g),
            torch_ops.haar_down(x.float(), factors, first_frame, g),
            dtype,
        )
    assert torch_ops.haar_down(x, factors, first_frame).dtype == dtype
    # the twin is the reference's orthonormal Haar, and the gain scales coarse frames
    want = transition.down(x.double().cpu().numpy()) * gain.double().cpu().numpy()[:, None, None]
    got = torch_ops.haar_down(x.double(), factors, first_frame, gain).cpu().numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize(("factors", "first_frame", "frames"), CASES)
def test_haar_down_twin_is_differentiable(factors, first_frame, frames):
    """Roll-outs backpropagate through the twin: the gradient of ``<c, L x>`` is ``L^T c``."""
    transition = rr.Resampler("haar", factors, first_frame)
    x = torch.randn((2, frames, *SHAPE_HW), dtype=torch.float64, requires_grad=True)
    c = torch.randn(transition.coarse_shape(tuple(x.shape)), dtype=torch.float64)
    (torch_ops.haar_down(x, factors, first_frame) * c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), transition.up(c.numpy(), tuple(x.shape)), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("factors", "first_frame", "frames"), CASES)
def test_haar_up_noisy_given_noise(factors, first_frame, frames, dtype):
    transition = rr.Resampler("haar", factors, first_frame)
    fine = (2, 3, frames, *SHAPE_HW)
    y, w = randn(transition.coarse_shape(fine), 1, dtype), randn(fine, 2, dtype)
    for s in (0.6, torch.tensor([0.2, 0.9], device=DEVICE)):
        want = torch_ops.haar_up_noisy(y.float(), s, w.float(), factors, first_frame)
        check(triton_ops.haar_up_noisy(y, s, w, factors, first_frame), want, dtype)
    assert torch_ops.haar_up_noisy(y, 0.6, w, factors, first_frame).dtype == dtype
    want = transition.up_noisy(y.double().cpu().numpy(), np.array([0.2, 0.9]), w.double().cpu().numpy())
    got = torch_ops.haar_up_noisy(y.double(), np.array([0.2, 0.9]), w.double(), factors, first_frame)
    np.testing.assert_allclose(got.cpu().numpy(), want, atol=1e-12)


@pytest.mark.parametrize(("factors", "first_frame", "frames"), CASES[:3])
def test_haar_up_noisy_philox_statistics(factors, first_frame, frames):
    """In-kernel noise: zero block mean exactly, and white before the projection (mean 0, variance 1)."""
    transition = rr.Resampler("haar", factors, first_frame)
    fine = (2, 4, frames, 32, 32)
    y = torch.zeros(transition.coarse_shape(fine), device=DEVICE)
    n = triton_ops.haar_up_noisy(y, 1.0, None, factors, first_frame, seed=123)
    assert n.shape == fine
    assert torch.equal(n, triton_ops.haar_up_noisy(y, 1.0, None, factors, first_frame, seed=123))
    assert not torch.equal(n, triton_ops.haar_up_noisy(y, 1.0, None, factors, first_frame, seed=124))
    blocks = torch_ops.haar_down(n, factors, first_frame)  # block sums / sqrt(r)
    assert blocks.abs().max().item() < 1e-5
    # the high band of white noise has variance (r - 1) / r per element; rescaled, the raw stream's 1
    r = torch.full((fine[2],), float(np.prod(factors)), device=DEVICE)
    if first_frame:
        r[0] = 4.0
    white = n * torch.sqrt(r / (r - 1))[:, None, None]
    assert abs(white.mean().item()) < 0.02 and abs(white.var().item() - 1.0) < 0.03
    # the torch twin's noise (torch.Generator stream) has the same properties
    t = torch_ops.haar_up_noisy(y, 1.0, None, factors, first_frame, seed=123)
    assert torch_ops.haar_down(t, factors, first_frame).abs().max().item() < 1e-5
    assert abs((t * torch.sqrt(r / (r - 1))[:, None, None]).var().item() - 1.0) < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_guided_euler(dtype):
    shape = (2, 3, 5, 7, 31)  # 6510 elements: a partial last EULER_BLOCK
    x, vc, vu = randn(shape, 3, dtype), randn(shape, 4), randn(shape, 5)
    g = torch.tensor([2.0, 2.8, 2.8, 2.8, 2.8], device=DEVICE)
    for v_u, scale in ((vu, 5.0), (None, 1.0)):
        want = torch_ops.guided_euler(x.float(), vc, v_u, 0.7, -0.05, g, scale)
        check(triton_ops.guided_euler(x, vc, v_u, 0.7, -0.05, g, scale), want, dtype)
    assert torch_ops.guided_euler(x, vc, vu, 0.7, -0.05, g, 5.0).dtype == dtype


def test_dispatcher_validates(monkeypatch):
    monkeypatch.setenv("PYRFLOW_TRITON", "1")
    x = torch.zeros(1, 1, 5, 4, 4)
    with pytest.raises(ValueError, match=r"support factors .* got \(2, 1, 1\)"):
        kernels.haar_down(x, (2, 1, 1))
    with pytest.raises(ValueError, match="frame count 4 does not fit the first-frame rule"):
        kernels.haar_down(torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"one value per coarse frame, shape \(3,\)"):
        kernels.haar_down(x, gain=torch.ones(5))
    y = torch.zeros(1, 1, 3, 2, 2)
    with pytest.raises(ValueError, match="needs the noise w or a seed"):
        kernels.haar_up_noisy(y, 0.5)
    with pytest.raises(ValueError, match=r"needs \(1, 1, 5, 4, 4\)"):
        kernels.haar_up_noisy(y, 0.5, torch.zeros(1, 1, 5, 4, 6))
    with pytest.raises(ValueError, match="one value per frame"):
        kernels.guided_euler(x, x, None, 0.5, -0.1, torch.ones(3))
    with pytest.raises(ValueError, match="v_uncond has shape"):
        kernels.guided_euler(x, x, y, 0.5, -0.1, torch.ones(5))


def test_dispatcher_routes(monkeypatch):
    """The dispatcher's results are the kernel's under PYRFLOW_TRITON=1 and the twin's under 0."""
    x = randn((1, 2, 5, 6, 6), 6)
    for flag, impl in (("1", triton_ops), ("0", torch_ops)):
        monkeypatch.setenv("PYRFLOW_TRITON", flag)
        assert torch.equal(kernels.haar_down(x), impl.haar_down(x, (2, 2, 2), True))
