r"""Triton kernels of the memory-bound pyramid steps (twins: :mod:`pyrflow_fast.kernels.torch_ops`).

Every kernel loads in the tensor's dtype, computes in float32 (the interpreter's bfloat16
arithmetic is wrong, and float32 is what the GPU does at no bandwidth cost), stores in the
output's dtype, and masks every load and store. Indices are int64, so sizes past 2**31 elements
are safe. The Haar kernels run one program per ``BLOCK`` coarse elements and put the block's
``4 * FT`` fine taps on a second axis, so the block sum (down) and block mean (up + noise) are row
reductions in registers: each fine element is read and written exactly once.

In-kernel noise is ``tl.randn(seed, i)`` at fine flat index ``i`` (Philox 4x32): a function of
``(seed, position)`` only, independent of the launch grid, but *not* the stream of
``torch.Generator().manual_seed(seed)``, so it matches the torch twin in distribution only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .torch_ops import fine_shape, per_sample

# Coarse elements per program of the Haar kernels (x 8 taps) and elements per Euler program. Fixed
# (no autotune): these ops are bandwidth-bound and insensitive to the tile once it is a few KB.
HAAR_BLOCK = 256
EULER_BLOCK = 1024


@triton.jit
def _haar_taps(n_coarse, F, H, W, Fc, Hc, Wc, FT: tl.constexpr, FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """This program's ``BLOCK`` coarse flat indices ``offs`` and their mask, the fine flat indices
    ``[BLOCK, 4 FT]`` of their blocks, the tap mask (in range, and frame 0 has one time tap under
    the first-frame rule) and the coarse frame index."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_coarse
    wc = offs % Wc
    rest = offs // Wc
    hc = rest % Hc
    rest = rest // Hc
    fc = rest % Fc
    n = rest // Fc
    j = tl.arange(0, 4 * FT)
    dt = (j // 4)[None, :]
    dh = ((j // 2) % 2)[None, :]
    dw = (j % 2)[None, :]
    if FIRST:
        f0 = tl.where(fc == 0, 0, FT * fc - (FT - 1))
        valid = (fc[:, None] > 0) | (dt == 0)
    else:
        f0 = FT * fc
        valid = dt >= 0
    fine = ((n * F + f0)[:, None] + dt) * H
    fine = (fine + (2 * hc)[:, None] + dh) * W + (2 * wc)[:, None] + dw
    return offs, mask, fine, mask[:, None] & valid, fc


@triton.jit
def _block_size(fc, FT: tl.constexpr, FIRST: tl.constexpr):
    """Fine elements ``r`` per coarse element (float32): 4 for frame 0 under the first-frame rule."""
    r = tl.full(fc.shape, 4.0 * FT, tl.float32)
    if FIRST:
        r = tl.where(fc == 0, 4.0, r)
    return r


@triton.jit
def _haar_down_kernel(
    x_ptr, out_ptr, gain_ptr, n_coarse, F, H, W, Fc, Hc, Wc,
    FT: tl.constexpr, FIRST: tl.constexpr, HAS_GAIN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs, mask, fine, taps, fc = _haar_taps(n_coarse, F, H, W, Fc, Hc, Wc, FT, FIRST, BLOCK)
    x = tl.load(x_ptr + fine, mask=taps, other=0.0).to(tl.float32)
    out = tl.sum(x, axis=1) / tl.sqrt(_block_size(fc, FT, FIRST))
    if HAS_GAIN:
        out = out * tl.load(gain_ptr + fc, mask=mask, other=0.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _haar_up_noisy_kernel(
    y_ptr, w_ptr, s_ptr, out_ptr, seed, n_coarse, per_sample, F, H, W, Fc, Hc, Wc,
    FT: tl.constexpr, FIRST: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs, mask, fine, taps, fc = _haar_taps(n_coarse, F, H, W, Fc, Hc, Wc, FT, FIRST, BLOCK)
    if HAS_W:
        w = tl.load(w_ptr + fine, mask=taps, other=0.0).to(tl.float32)
    else:
        w = tl.where(taps, tl.randn(seed, fine), 0.0)
    r = _block_size(fc, FT, FIRST)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs // per_sample, mask=mask, other=0.0)
    mean = tl.sum(w, axis=1) / r
    out = (y / tl.sqrt(r))[:, None] + s[:, None] * (w - mean[:, None])
    tl.store(out_ptr + fine, out.to(out_ptr.dtype.element_ty), mask=taps)


@triton.jit
def _guided_euler_kernel(
    x_ptr, vc_ptr, vu_ptr, g_ptr, out_ptr, n, F, HW, sigma, dsigma, scale,
    HAS_UNCOND: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + (offs // HW) % F, mask=mask, other=1.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(vc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        u = tl.load(vu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = u + scale * (v - u)  # pyrflow_ref.samplers.guidance_combine (a kernel cannot call Python)
    c = g * (1.0 - sigma) + sigma
    vs = sigma / c
    out = x + dsigma * ((1.0 - g) * (x / c) + ((1.0 - vs) + g * vs) * v)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _fp32(t: torch.Tensor, device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32).contiguous()


# twin: pyrflow_fast.kernels.haar_down, pyrflow_fast.kernels.torch_ops.haar_down
def haar_down(x: torch.Tensor, factors, first_frame: bool, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`pyrflow_fast.kernels.torch_ops.haar_down`."""
    x = x.contiguous()
    ft = factors[0]
    *lead, f, h, w = x.shape
    fc = 1 + (f - 1) // ft if first_frame else f // ft
    out = torch.empty((*lead, fc, h // 2, w // 2), dtype=x.dtype, device=x.device)
    if out.numel():
        g = _fp32(gain, x.device) if gain is not None else out
        grid = (triton.cdiv(out.numel(), HAAR_BLOCK),)
        _haar_down_kernel[grid](
            x, out, g, out.numel(), f, h, w, fc, h // 2, w // 2,
            FT=ft, FIRST=first_frame, HAS_GAIN=gain is not None, BLOCK=HAAR_BLOCK,
        )  # fmt: skip
    return out


# twin: pyrflow_fast.kernels.haar_up_noisy, pyrflow_fast.kernels.torch_ops.haar_up_noisy
def haar_up_noisy(
    y: torch.Tensor, s, w: torch.Tensor | None, factors, first_frame: bool, seed: int | None = None
) -> torch.Tensor:
    """Triton twin of :func:`pyrflow_fast.kernels.torch_ops.haar_up_noisy` (in-kernel Philox without ``w``)."""
    y = y.contiguous()
    shape = fine_shape(y.shape, factors, first_frame)
    out = torch.empty(shape, dtype=y.dtype, device=y.device)
    if y.numel():
        s = per_sample(s, y, torch.float32).contiguous()
        w = w.contiguous() if w is not None else None
        grid = (triton.cdiv(y.numel(), HAAR_BLOCK),)
        _haar_up_noisy_kernel[grid](
            y, w if w is not None else y, s, out, 0 if seed is None else seed, y.numel(), y.numel() // y.shape[0],
            *shape[-3:], *y.shape[-3:], FT=factors[0], FIRST=first_frame, HAS_W=w is not None, BLOCK=HAAR_BLOCK,
        )  # fmt: skip
    return out


# twin: pyrflow_fast.kernels.guided_euler, pyrflow_fast.kernels.torch_ops.guided_euler
def guided_euler(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    sigma: float,
    dsigma: float,
    g: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Triton twin of :func:`pyrflow_fast.kernels.torch_ops.guided_euler`."""
    x, v_cond = x.contiguous(), v_cond.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        f, h, w = x.shape[-3:]
        vu = v_uncond.contiguous() if v_uncond is not None else v_cond
        grid = (triton.cdiv(x.numel(), EULER_BLOCK),)
        _guided_euler_kernel[grid](
            x, v_cond, vu, _fp32(g, x.device), out, x.numel(), f, h * w, float(sigma), float(dsigma), float(scale),
            HAS_UNCOND=v_uncond is not None, BLOCK=EULER_BLOCK,
        )  # fmt: skip
    return out
