r"""Torch twin of :mod:`pyrflow_ref.resample`: the same resamplers on batched tensors of any device and dtype.

Shapes, gains and validation are host-side and inherited from the reference classes (same
errors, same messages); only the operators are torch. The per-axis matrices are the reference's
(first-frame block and avgpool scaling included), converted once per ``(shape, device, dtype)``.
Haar transitions with factors in :data:`pyrflow_fast.kernels.FUSED_FACTORS` run ``down`` and
``up_noisy`` through the fused kernels (Triton on CUDA, their torch twin elsewhere).

>>> import torch
>>> r = Resampler("haar", (2, 2, 2))
>>> x = torch.randn(2, 16, 5, 4, 8, dtype=torch.float64)
>>> r.down(x).shape
torch.Size([2, 16, 3, 2, 4])
>>> bool(torch.allclose(r.down(r.up(r.down(x))), r.down(x)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyrflow_ref import resample as ref

from . import kernels


# twin: pyrflow_ref.resample.batch_scalar
def batch_scalar(s, ndim: int, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """A scalar or per-sample ``(B,)`` value as a tensor shaped to broadcast against a ``ndim``-tensor.

    Torch twin of :func:`pyrflow_ref.resample.batch_scalar`; ``dtype`` and ``device`` are those of
    the tensor it will meet.
    """
    s = torch.as_tensor(s, dtype=dtype, device=device)
    if s.ndim > 1:
        raise ValueError(f"expected a scalar or a per-sample (B,) array, got shape {tuple(s.shape)}")
    return s.reshape(s.shape + (1,) * (ndim - s.ndim)) if s.ndim else s


# twin: pyrflow_ref.resample.Resampler
@dataclass(frozen=True)
class Resampler(ref.Resampler):
    """Torch twin of :class:`pyrflow_ref.resample.Resampler` (same fields, validation, shapes and gains)."""

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "_ops_cache", {})

    @property
    def fused(self) -> bool:
        """Whether ``down`` and ``up_noisy`` run through the fused Haar kernels."""
        return self.family == "haar" and self.factors in kernels.FUSED_FACTORS

    def _torch_ops(self, shape: tuple[int, ...], like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(down, up) matrix per axis for a fine ``shape``, as tensors on ``like``'s device and dtype."""
        key = (tuple(shape[-3:]), like.device, like.dtype)
        if key not in self._ops_cache:
            # copies: the reference's matrices are read-only arrays, which torch will not wrap
            self._ops_cache[key] = [
                tuple(torch.tensor(m, dtype=like.dtype, device=like.device) for m in pair)
                for pair in self._axis_ops(tuple(shape))
            ]
        return self._ops_cache[key]

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """``L x`` (``A x`` for avgpool): fine ``(..., F, H, W)`` to coarse."""
        if self.fused:
            return kernels.haar_down(x, self.factors, self.first_frame)
        for axis, (d, _) in enumerate(self._torch_ops(x.shape, x)):
            x = _apply(x, d, axis - 3)
        return x

    def up(self, y: torch.Tensor, fine_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``L^T y`` (``U y`` for avgpool). ``fine_shape`` defaults to the exact inverse size."""
        shape = self.fine_shape(tuple(y.shape)) if fine_shape is None else tuple(fine_shape)
        if self.coarse_shape(shape) != tuple(y.shape):
            raise ValueError(f"coarse array of shape {tuple(y.shape)} does not come from fine shape {shape}")
        for axis, (_, u) in enumerate(self._torch_ops(shape, y)):
            y = _apply(y, u, axis - 3)
        return y

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``P x = L^T L x``, the orthogonal projection onto the low band."""
        return self.up(self.down(x), tuple(x.shape))

    def high(self, x: torch.Tensor) -> torch.Tensor:
        """``(I - P) x``, the high band."""
        return x - self.project(x)

    def up_noisy(self, y: torch.Tensor, s, w: torch.Tensor) -> torch.Tensor:
        r"""Noise-augmented upsampling :math:`L^\top y + s (w - L^\top L w)`, ``w`` white at the fine shape."""
        if self.family == "avgpool":
            raise ValueError(
                "up_noisy needs an orthonormal family; for Pyramid Flow's avgpool jump use "
                "pyrflow_ref.pyramid_flow.jump_coefficients"
            )
        if self.fused:
            return kernels.haar_up_noisy(y, s, w, self.factors, self.first_frame)
        return self.up(y, tuple(w.shape)) + batch_scalar(s, w.ndim, w.dtype, w.device) * self.high(w)


# twin: pyrflow_ref.resample._apply
def _apply(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply ``m`` into ``x`` along ``axis``."""
    return torch.movedim(torch.movedim(x, axis, -1) @ m.T, -1, axis)


# twin: pyrflow_ref.resample.Pyramid
@dataclass(frozen=True)
class Pyramid(ref.Pyramid):
    """Torch twin of :class:`pyrflow_ref.resample.Pyramid`: a stack of :class:`Resampler` transitions.

    Shapes and gains are the reference's (host-side, float64 NumPy gains).

    >>> p = Pyramid.uniform("haar", (2, 2, 2), num_stages=3)
    >>> [s[-3:] for s in p.shapes((1, 16, 21, 56, 104))]
    [(21, 56, 104), (11, 28, 52), (6, 14, 26)]
    """

    @classmethod
    def uniform(cls, family: str = "haar", factors=(2, 2, 2), num_stages: int = 3, first_frame: bool = True):
        """``num_stages - 1`` identical transitions."""
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        return cls(tuple(Resampler(family, tuple(factors), first_frame) for _ in range(num_stages - 1)))


WAN_PYRAMID = Pyramid.uniform("haar", (2, 2, 2), num_stages=3, first_frame=True)
"""The Wan 3-stage pyramid: orthonormal Haar, 2x in time (first-frame rule), height and width."""
