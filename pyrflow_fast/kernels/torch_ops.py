r"""Pure-torch twins of the Triton kernels: the oracle of the kernel tests and the fallback off CUDA.

Each function computes in ``promote_types(dtype, float32)`` (the kernels compute in float32;
float64 stays float64) and returns the dtype of its main input. Orthonormal Haar with factors
``(2, 2, 2)`` or ``(1, 2, 2)``: a coarse element is the sum of its block of ``r`` fine elements
divided by :math:`\sqrt r` (``r = 4`` for frame 0 under the first-frame rule). For Haar,
:math:`P = L^\top L` is the block mean, so the high band of ``w`` is ``w - blockmean(w)``.
"""

from __future__ import annotations

import torch

from pyrflow_ref.natural import scale_c, varsigma
from pyrflow_ref.resample import Resampler


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fused ops compute in: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def per_sample(s, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A number or per-sample ``(B,)`` noise level as a ``(B,)`` tensor, ``B = y.shape[0]``."""
    s = torch.as_tensor(s, dtype=dtype, device=y.device)
    if s.ndim > 1:
        raise ValueError(f"expected a scalar or a per-sample (B,) noise level, got shape {tuple(s.shape)}")
    return s.expand(y.shape[0])


def fine_shape(shape, factors, first_frame: bool) -> tuple[int, ...]:
    """The fine shape of a Haar transition whose coarse shape is ``shape``."""
    return Resampler("haar", tuple(factors), first_frame).fine_shape(tuple(shape))


def _pieces(first_frame: bool, ft: int) -> list[tuple[slice, int]]:
    """(frame slice, time factor) of each independently resampled run of frames (fine and coarse alike)."""
    return [(slice(0, 1), 1), (slice(1, None), ft)] if first_frame else [(slice(None), ft)]


def _pair_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sums of adjacent pairs along a negative ``dim``: one pass over ``x``, writing half of it."""
    v = x.unflatten(dim, (-1, 2))
    return v.select(dim, 0) + v.select(dim, 1)


def _block_sum(x: torch.Tensor, ft: int) -> torch.Tensor:
    """Sums over ``(ft, 2, 2)`` blocks of ``(..., f, H, W)``.

    Pair sums, frames first: the frame and row pairs add contiguous rows (vectorised), and the
    one strided pass (column pairs) runs on a quarter of the data. A single 6-d reduction is ~50x
    slower on the CPU (``benchmarks/bench_ops.py``).
    """
    x = _pair_sum(x, -3) if ft == 2 else x
    return _pair_sum(_pair_sum(x, -2), -1)


def _rows(x: torch.Tensor, ft: int) -> torch.Tensor:
    """View ``(..., f, H, W)`` as ``(..., f/ft, ft, H/2, 2, W)``: whole rows, the fine pass's inner loop."""
    return x.unflatten(-2, (-1, 2)).unflatten(-4, (-1, ft))


# twin: pyrflow_fast.kernels.haar_down, pyrflow_fast.kernels.triton_ops.haar_down
def haar_down(x: torch.Tensor, factors, first_frame: bool, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal Haar ``L x`` of ``(..., F, H, W)``; coarse frame ``f`` is multiplied by ``gain[f]`` if given."""
    xc = x.to(compute_dtype(x.dtype))
    pieces = _pieces(first_frame, factors[0])
    out = torch.cat([_block_sum(xc[..., fs, :, :], ft) for fs, ft in pieces], -3)
    # 1 / sqrt(r) per coarse frame (r = 4 for frame 0 under the first-frame rule), times the gain: one pass
    scale = torch.full((out.shape[-3], 1, 1), (4 * factors[0]) ** -0.5, dtype=out.dtype, device=out.device)
    if first_frame:
        scale[0] = 0.5
    if gain is not None:
        scale = scale * gain.to(out).reshape(-1, 1, 1)
    return out.mul_(scale).to(x.dtype)


# twin: pyrflow_fast.kernels.haar_up_noisy, pyrflow_fast.kernels.triton_ops.haar_up_noisy
def haar_up_noisy(
    y: torch.Tensor, s, w: torch.Tensor | None, factors, first_frame: bool, seed: int | None = None
) -> torch.Tensor:
    r"""``L^T y + s (w - blockmean(w))``; without ``w``, white noise from ``torch.Generator().manual_seed(seed)``."""
    ct = compute_dtype(y.dtype)
    shape = fine_shape(y.shape, factors, first_frame)
    if w is None:
        w = torch.randn(shape, generator=torch.Generator(device=y.device).manual_seed(seed), device=y.device, dtype=ct)
    yc, wc = y.to(ct), w.to(ct)
    scalar = isinstance(s, (int, float))
    s_b = None if scalar else per_sample(s, y, ct).reshape((-1,) + (1,) * (y.ndim - 1))
    out = torch.empty(shape, dtype=ct, device=y.device)
    for fs, ft in _pieces(first_frame, factors[0]):
        # spread(y / sqrt(r) - s blockmean(w)) + s w: the coarse part is small; spread along W first so
        # the one pass over w and out runs on whole rows, broadcast over the frame and row taps only
        wp, r = wc[..., fs, :, :], 4 * ft
        block_mean = _block_sum(wp, ft).div_(r)
        coarse = yc[..., fs, :, :] / r**0.5 - (s * block_mean if scalar else s_b * block_mean)
        spread = coarse.repeat_interleave(2, dim=-1)[..., :, None, :, None, :]
        target = _rows(out[..., fs, :, :], ft)
        if scalar:
            torch.add(spread, _rows(wp, ft), alpha=s, out=target)
        else:
            torch.addcmul(spread, s_b.reshape(s_b.shape + (1, 1)), _rows(wp, ft), out=target)
    return out.to(y.dtype)


# twin: pyrflow_fast.kernels.guided_euler, pyrflow_fast.kernels.triton_ops.guided_euler
def guided_euler(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    sigma: float,
    dsigma: float,
    g: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Euler step ``x + dsigma * bridge_velocity(x, sigma, g, v)`` with ``v = v_u + scale (v_c - v_u)``.

    ``g`` is the per-frame gain ``(F,)``; without ``v_uncond``, ``v = v_cond``. The bridge is affine
    in ``x`` and ``v`` with per-frame coefficients, so the step is ``a x + b s v_c + b (1 - s) v_u``:
    one multiply and two in-place ``addcmul`` passes.
    """
    ct = compute_dtype(x.dtype)
    g = g.to(device=x.device, dtype=ct).reshape(-1, 1, 1)
    vs = varsigma(sigma, g)
    a = 1 + dsigma * (1 - g) / scale_c(sigma, g)
    b = dsigma * ((1 - vs) + g * vs)
    out = torch.mul(x.to(ct), a)
    if v_uncond is None:
        return out.addcmul_(b, v_cond.to(ct)).to(x.dtype)
    # b (v_u + scale (v_c - v_u)) = b scale v_c + b (1 - scale) v_u: two in-place passes, no temporary
    out.addcmul_(b * scale, v_cond.to(ct))
    return out.addcmul_(b * (1 - scale), v_uncond.to(ct)).to(x.dtype)
