"""Fused kernels of the memory-bound pyramid steps, with a dispatcher between Triton and torch.

- :func:`haar_down`: orthonormal Haar ``L x`` (factors ``(2, 2, 2)`` or ``(1, 2, 2)``, first-frame
  rule), optionally times a per-frame gain (e.g. ``1 / g`` to reach natural scale);
- :func:`haar_up_noisy`: ``up(y) + s (w - up(down(w)))`` in one pass, ``w`` given or drawn in-kernel;
- :func:`guided_euler`: guidance combine of the natural velocities
  (:func:`pyrflow_ref.samplers.guidance_combine`), velocity bridge and Euler update.

Each op has a Triton kernel (:mod:`.triton_ops`) and a pure-torch twin (:mod:`.torch_ops`, the
oracle of the tests and the fallback). :func:`use_triton` picks: Triton for float32/16 tensors on
CUDA when triton imports, torch otherwise; ``PYRFLOW_TRITON=0`` forces torch and
``PYRFLOW_TRITON=1`` forces Triton (on CPU tensors that needs ``TRITON_INTERPRET=1``, as in the
tests). float64 always takes torch: the kernels compute in float32.

>>> import torch
>>> x = torch.ones(1, 1, 3, 2, 2)
>>> [round(v, 6) for v in haar_down(x, (2, 2, 2)).flatten().tolist()]  # frame 0: 4 / 2; frames 1-2: 8 / sqrt(8)
[2.0, 2.828427]
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType

import torch

from pyrflow_ref.resample import Resampler

from . import torch_ops

__all__ = ["FUSED_FACTORS", "guided_euler", "haar_down", "haar_up_noisy", "use_triton"]

FUSED_FACTORS = ((2, 2, 2), (1, 2, 2))
"""Per-axis ``(T, H, W)`` factors the Haar kernels implement."""

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@cache
def _triton_ops() -> ModuleType | None:
    try:
        return importlib.import_module(".triton_ops", __name__)
    except ImportError:
        return None


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the ops on ``tensor`` run as Triton kernels (see the module docstring)."""
    flag = os.environ.get("PYRFLOW_TRITON", "")
    if flag not in ("", "0", "1"):
        raise ValueError(f"PYRFLOW_TRITON must be 0, 1 or unset, got {flag!r}")
    if flag == "0" or tensor.dtype not in _KERNEL_DTYPES:
        return False
    if flag == "1":
        if _triton_ops() is None:
            raise RuntimeError("PYRFLOW_TRITON=1 but triton does not import")
        return True
    return tensor.is_cuda and _triton_ops() is not None


def _impl(tensor: torch.Tensor) -> ModuleType:
    return _triton_ops() if use_triton(tensor) else torch_ops


def _haar_transition(factors, first_frame: bool) -> Resampler:
    factors = tuple(int(f) for f in factors)
    if factors not in FUSED_FACTORS:
        raise ValueError(f"fused Haar kernels support factors {FUSED_FACTORS}, got {factors}")
    return Resampler("haar", factors, first_frame)


# twin: pyrflow_fast.kernels.torch_ops.haar_down, pyrflow_fast.kernels.triton_ops.haar_down
def haar_down(
    x: torch.Tensor, factors=(2, 2, 2), first_frame: bool = True, gain: torch.Tensor | None = None
) -> torch.Tensor:
    """Orthonormal Haar down of ``(..., F, H, W)``; coarse frame ``f`` times ``gain[f]`` if given."""
    shape = _haar_transition(factors, first_frame).coarse_shape(x.shape)
    if gain is not None and tuple(gain.shape) != shape[-3:-2]:
        raise ValueError(f"gain must have one value per coarse frame, shape ({shape[-3]},), got {tuple(gain.shape)}")
    return _impl(x).haar_down(x, tuple(factors), first_frame, gain)


# twin: pyrflow_fast.kernels.torch_ops.haar_up_noisy, pyrflow_fast.kernels.triton_ops.haar_up_noisy
def haar_up_noisy(
    y: torch.Tensor,
    s,
    w: torch.Tensor | None = None,
    factors=(2, 2, 2),
    first_frame: bool = True,
    seed: int | None = None,
) -> torch.Tensor:
    """Noise-augmented Haar up ``up(y) + s (w - blockmean(w))``, ``s`` a number or per-sample ``(B,)``.

    Without ``w`` the white noise is generated from ``seed``: in-kernel Philox on the Triton path,
    ``torch.Generator().manual_seed(seed)`` on the torch path. The two streams differ (same
    distribution), so results are reproducible per path only.
    """
    transition = _haar_transition(factors, first_frame)
    shape = transition.fine_shape(tuple(y.shape))
    if w is not None and tuple(w.shape) != shape:
        raise ValueError(f"noise has shape {tuple(w.shape)}, the coarse array of shape {tuple(y.shape)} needs {shape}")
    if w is None and seed is None:
        raise ValueError("haar_up_noisy needs the noise w or a seed to generate it")
    return _impl(y).haar_up_noisy(y, s, w, tuple(factors), first_frame, seed)


# twin: pyrflow_fast.kernels.torch_ops.guided_euler, pyrflow_fast.kernels.triton_ops.guided_euler
def guided_euler(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    sigma: float,
    dsigma: float,
    g: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    r"""Euler step ``x + dsigma * dx/dsigma`` of a stage sample ``(..., F, H, W)`` at global level ``sigma``.

    ``dx/dsigma`` is the velocity bridge (:func:`pyrflow_ref.natural.bridge_velocity`) with per-frame
    gain ``g`` ``(F,)`` applied to the guided natural velocity ``v_u + scale (v_c - v_u)``
    (:func:`pyrflow_ref.samplers.guidance_combine`)
    (``v_cond`` alone when ``v_uncond`` is None).
    """
    if tuple(g.shape) != tuple(x.shape[-3:-2]):
        raise ValueError(f"g must have one value per frame, shape ({x.shape[-3]},), got {tuple(g.shape)}")
    for name, v in (("v_cond", v_cond), ("v_uncond", v_uncond)):
        if v is not None and v.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, x has {tuple(x.shape)}")
    return _impl(x).guided_euler(x, v_cond, v_uncond, sigma, dsigma, g, scale)
