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
from pyrflow_ref.samplers import guidance_combine


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


def _block_sum(x: torch.Tensor, ft: int) -> torch.Tensor:
    """Sums over ``(ft, 2, 2)`` blocks; strided pair sums stay fast on the CPU, unlike a 6-d reduction."""
    x = x[..., 0::2] + x[..., 1::2]
    x = x[..., 0::2, :] + x[..., 1::2, :]
    return x[..., 0::2, :, :] + x[..., 1::2, :, :] if ft == 2 else x


def _blocks(x: torch.Tensor, ft: int) -> torch.Tensor:
    """View ``(..., f, H, W)`` as ``(..., f/ft, ft, H/2, 2, W/2, 2)``."""
    return x.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2)).unflatten(-5, (-1, ft))


def _spread(c: torch.Tensor) -> torch.Tensor:
    """Broadcast coarse ``(..., fc, hc, wc)`` against :func:`_blocks`."""
    return c[..., :, None, :, None, :, None]


# twin: pyrflow_fast.kernels.haar_down, pyrflow_fast.kernels.triton_ops.haar_down
def haar_down(x: torch.Tensor, factors, first_frame: bool, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal Haar ``L x`` of ``(..., F, H, W)``; coarse frame ``f`` is multiplied by ``gain[f]`` if given."""
    xc = x.to(compute_dtype(x.dtype))
    out = torch.cat(
        [_block_sum(xc[..., fs, :, :], ft) / (4 * ft) ** 0.5 for fs, ft in _pieces(first_frame, factors[0])], -3
    )
    if gain is not None:
        out = out * gain.to(out).reshape(-1, 1, 1)
    return out.to(x.dtype)


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
    s = per_sample(s, y, ct).reshape((-1,) + (1,) * (y.ndim - 1))
    out = torch.empty(shape, dtype=ct, device=y.device)
    for fs, ft in _pieces(first_frame, factors[0]):
        # s w + spread(y / sqrt(r) - s blockmean(w)): the coarse part is cheap, one pass over w and out
        wp, r = wc[..., fs, :, :], 4 * ft
        coarse = yc[..., fs, :, :] / r**0.5 - s * _block_sum(wp, ft) / r
        torch.addcmul(_spread(coarse), _spread(s), _blocks(wp, ft), out=_blocks(out[..., fs, :, :], ft))
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
    in ``x`` and ``v`` with per-frame coefficients, so the step is ``a x + b v`` (three passes).
    """
    ct = compute_dtype(x.dtype)
    v = v_cond.to(ct)
    if v_uncond is not None:
        v = guidance_combine(v_uncond.to(ct), v, scale)
    g = g.to(device=x.device, dtype=ct).reshape(-1, 1, 1)
    vs = varsigma(sigma, g)
    a = 1 + dsigma * (1 - g) / scale_c(sigma, g)
    b = dsigma * ((1 - vs) + g * vs)
    return torch.addcmul(a * x.to(ct), b, v).to(x.dtype)
