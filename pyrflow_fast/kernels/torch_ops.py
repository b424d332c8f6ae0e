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


def _taps(frames: int, ft: int, first_frame: bool) -> list[tuple[slice, tuple[slice, ...]]]:
    """``(coarse frames, fine frames of each time tap)`` of every run of frames resampled alike.

    Coarse frame ``k`` of a run gathers fine frame ``k`` of each tap slice: with ``ft = 2`` and the
    first-frame rule, frame 0 alone, then the pairs ``(1, 2), (3, 4), ...`` as taps ``1::2`` and ``2::2``.
    """
    if ft == 1:
        return [(slice(None), (slice(None),))]
    start = 1 if first_frame else 0
    runs = [(slice(0, 1), (slice(0, 1),))] if first_frame else []
    return runs + [(slice(start, None), (slice(start, frames, 2), slice(start + 1, frames, 2)))]


def _row_sums(x: torch.Tensor, ft: int, first_frame: bool) -> torch.Tensor:
    """Sums over the frame and row taps of each ``(ft, 2, 2)`` block: ``(..., F, H, W)`` to ``(..., Fc, H/2, W)``.

    Only contiguous rows are added (vectorised adds); the strided column pairs are left for the
    quarter-sized result. A ``sum`` over the tap dimensions of a 7-d view is 50-130x slower on the CPU.
    """
    *lead, frames, h, w = x.shape
    runs = _taps(frames, ft, first_frame)
    sources = [x[..., t[0], :, :] if len(t) == 1 else x[..., t[0], :, :] + x[..., t[1], :, :] for _, t in runs]
    if torch.is_grad_enabled() and x.requires_grad:  # out= is not differentiable: concatenate instead
        return torch.cat([src[..., 0::2, :] + src[..., 1::2, :] for src in sources], -3)
    out = x.new_empty((*lead, sum(src.shape[-3] for src in sources), h // 2, w))
    for (cs, _), src in zip(runs, sources):
        torch.add(src[..., 0::2, :], src[..., 1::2, :], out=out[..., cs, :, :])
    return out


def _frame_scale(coarse_frames: int, ft: int, first_frame: bool, dtype, device, power: float) -> torch.Tensor:
    """``r ** power`` per coarse frame as ``(Fc, 1, 1)``: ``r = 4 ft``, and 4 for frame 0 under the first-frame rule."""
    scale = torch.full((coarse_frames, 1, 1), float(4 * ft) ** power, dtype=dtype, device=device)
    if first_frame:
        scale[0] = 4.0**power
    return scale


def _blocks(x: torch.Tensor, ft: int) -> torch.Tensor:
    """View ``(..., f, H, W)`` as ``(..., f/ft, ft, H/2, 2, W)``: the time and row taps of each block."""
    return x.unflatten(-2, (-1, 2)).unflatten(-4, (-1, ft))


# twin: pyrflow_fast.kernels.haar_down, pyrflow_fast.kernels.triton_ops.haar_down
def haar_down(x: torch.Tensor, factors, first_frame: bool, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal Haar ``L x`` of ``(..., F, H, W)``; coarse frame ``f`` is multiplied by ``gain[f]`` if given."""
    sums = _row_sums(x.to(compute_dtype(x.dtype)), factors[0], first_frame)
    out = torch.add(sums[..., 0::2], sums[..., 1::2])  # the one strided pass, on a quarter of x
    scale = _frame_scale(out.shape[-3], factors[0], first_frame, out.dtype, out.device, -0.5)
    if gain is not None:
        scale = scale * gain.to(out).reshape(-1, 1, 1)
    return out.mul_(scale).to(x.dtype)


# twin: pyrflow_fast.kernels.haar_up_noisy, pyrflow_fast.kernels.triton_ops.haar_up_noisy
def haar_up_noisy(
    y: torch.Tensor, s, w: torch.Tensor | None, factors, first_frame: bool, seed: int | None = None
) -> torch.Tensor:
    r"""``L^T y + s (w - blockmean(w))``; without ``w``, white noise from ``torch.Generator().manual_seed(seed)``.

    As ``spread(y / sqrt(r) - s blocksum(w) / r) + s w``: the coarse part is computed on the
    coarse grid and spread along W (a quarter of the fine size), then one pass per run of frames
    writes the output from ``w`` and that spread broadcast over the time and row taps. Generated
    noise is drawn straight into the output buffer, which that pass then updates in place.
    """
    ct = compute_dtype(y.dtype)
    ft = factors[0]
    shape = fine_shape(y.shape, factors, first_frame)
    out = torch.empty(shape, dtype=ct, device=y.device)
    if w is None:
        w = out.normal_(generator=torch.Generator(device=y.device).manual_seed(seed))
    wc = w.to(ct)
    scalar = isinstance(s, (int, float))
    sums = _row_sums(wc, ft, first_frame)
    coarse = torch.add(sums[..., 0::2], sums[..., 1::2])
    inv_r = _frame_scale(coarse.shape[-3], ft, first_frame, ct, y.device, -1.0)
    if scalar:
        coarse.mul_(inv_r * -s)
    else:
        s_b = per_sample(s, y, ct).reshape((-1,) + (1,) * (y.ndim - 1))
        coarse.mul_(inv_r * -s_b)
    coarse.addcmul_(y.to(ct), inv_r.sqrt())
    spread = coarse.unsqueeze(-1).expand(*coarse.shape, 2).flatten(-2)  # (..., Fc, H/2, W): a quarter of out
    for cs, taps in _taps(shape[-3], ft, first_frame):
        # one pass per run of frames over whole rows of w and out, the spread broadcast over the
        # time and row taps of its blocks (the taps of a run interleave: (Fc, ft) frames)
        fs = slice(taps[0].start, None) if len(taps) == 2 else taps[0]
        target, noise = _blocks(out[..., fs, :, :], len(taps)), _blocks(wc[..., fs, :, :], len(taps))
        coarse_rows = spread[..., cs, None, :, None, :]
        if scalar:
            torch.add(coarse_rows, noise, alpha=s, out=target)
        else:
            torch.addcmul(coarse_rows, s_b.reshape(s_b.shape + (1, 1)), noise, out=target)
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
