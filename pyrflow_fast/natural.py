r"""Torch twin of :mod:`pyrflow_ref.natural`: natural noise level, scale and the velocity bridge.

:func:`varsigma`, :func:`sigma_from_varsigma`, :func:`scale_c`, :func:`bridge_velocity` and
:func:`natural_velocity` are plain arithmetic, so the reference functions are the twins: they
accept tensors (and numbers) unchanged and are re-exported here. Only :func:`per_frame`, which
builds tensors, has a torch body.

>>> import torch
>>> s, g = per_frame(torch.tensor([0.2, 0.5]), torch.tensor([2.0, 2.8, 2.8]))
>>> tuple(s.shape), tuple(g.shape), tuple(varsigma(s, g).shape)
((2, 1, 1, 1, 1), (3, 1, 1), (2, 1, 3, 1, 1))
"""

from __future__ import annotations

import torch

from pyrflow_ref.natural import bridge_velocity, natural_velocity, scale_c, sigma_from_varsigma, varsigma

from .resample import batch_scalar

__all__ = ["bridge_velocity", "natural_velocity", "per_frame", "scale_c", "sigma_from_varsigma", "varsigma"]


# twin: pyrflow_ref.natural.per_frame
def per_frame(sigma, g, ndim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape a scalar or per-sample ``sigma`` ``(B,)`` and a per-frame gain ``(F,)`` for ``(B, C, F, H, W)``.

    Returns tensors on ``g``'s device and in its dtype (a non-tensor ``g`` becomes float64 on the
    CPU, as in the reference), broadcastable against a ``ndim``-tensor whose frame axis is ``-3``.
    """
    g = torch.as_tensor(g, dtype=None if torch.is_tensor(g) else torch.float64)
    return batch_scalar(sigma, ndim, g.dtype, g.device), g.reshape(g.shape + (1, 1))
