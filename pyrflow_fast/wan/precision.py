"""Wan2.1's precision rules for :mod:`pyrflow_fast.wan.model`: float32 regions and dtype-following matmuls.

Wan runs its time embedding, modulation, norms, residual stream and head in float32 whatever the
weights' dtype or the autocast state (float64 in a float64 model: :func:`hi_dtype`), and every other
matmul in the weights' dtype or, under ``torch.autocast``, in autocast's (:func:`linear`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WanRMSNorm",
    "autocast_enabled",
    "gelu_tanh",
    "hi_dtype",
    "layer_norm32",
    "linear",
    "linear32",
    "projections",
]

_GELU_C = (2 / math.pi) ** 0.5


def hi_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of Wan's float32 regions for parameters or activations of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in at least float32 (float64 for float64 weights), whatever the autocast state."""
    dtype = hi_dtype(layer.weight.dtype)
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def layer_norm32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Wan's ``WanLayerNorm``: normalise ``x`` in at least float32 (affine params too), cast back to x.dtype."""
    dtype = hi_dtype(x.dtype)
    weight = None if norm.weight is None else norm.weight.to(dtype)
    bias = None if norm.bias is None else norm.bias.to(dtype)
    return F.layer_norm(x.to(dtype), norm.normalized_shape, weight, bias, norm.eps).type_as(x)


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``x``'s device type."""
    return torch.is_autocast_enabled(x.device.type)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in the layer's dtype (under autocast: autocast's), so bf16 weights take a float32 stream."""
    return layer(x if autocast_enabled(x) else x.to(layer.weight.dtype))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` (Wan's FFN and text-MLP activation), any shape.

    float32/float64 on the CPU evaluates the identity ``0.5 x (1 + tanh z) = x sigmoid(2 z)``,
    ``z = sqrt(2/pi) (x + 0.044715 x^3)``, in place without gradients: 2.2x faster there, where ATen's CPU ``tanh`` is
    the cost (0.92 vs 2.02 ms on 2304 x 512 float32, one thread). On 10^6 samples of N(0, 16) it is
    within 4.8e-7 of F.gelu and within 5.2e-7 of the float64 value (F.gelu: 4.3e-7). Elsewhere
    (other dtypes or devices) it is F.gelu.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled():  # the same arithmetic out of place, so autograd keeps its inputs
        return torch.sigmoid((x * x * (2 * _GELU_C * 0.044715) + 2 * _GELU_C) * x) * x
    z = x * x
    z.mul_(2 * _GELU_C * 0.044715).add_(2 * _GELU_C).mul_(x)
    return z.sigmoid_().mul_(x)


def _hookless(layer: nn.Module) -> bool:
    return not (layer._forward_hooks or layer._forward_pre_hooks)


def projections(x: torch.Tensor, layers: Sequence[nn.Linear]) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]`` as one matmul over the concatenated weights.

    The checkpoint keeps Wan's separate ``q``/``k``/``v`` parameters; concatenating them costs one
    copy of the weights per call (measured in ``benchmarks/bench_ops.py``). Layers with hooks (e.g.
    :class:`~pyrflow_fast.train.lora.LoRA` adapters) are called one by one so their hooks run.
    """
    if not all(_hookless(layer) for layer in layers):
        return [linear(layer, x) for layer in layers]
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    out = F.linear(x if autocast_enabled(x) else x.to(weight.dtype), weight, bias)
    return list(out.split([layer.out_features for layer in layers], dim=-1))


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dimension: normalised in at least float32, cast back, then times ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is one fused pass; it gives the same values as x * rsqrt(mean(x^2) + eps) here
        normed = F.rms_norm(x.to(hi_dtype(x.dtype)), (x.shape[-1],), None, self.eps)
        return normed.type_as(x) * self.weight
