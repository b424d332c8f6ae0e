"""Wan2.1's attention layers: self-attention over the video tokens (3-axis RoPE) and cross-attention to the text.

Module and parameter names are Wan's (``q``, ``k``, ``v``, ``o``, ``norm_q``, ``norm_k``), so the state dict
keys of :class:`~pyrflow_fast.wan.WanDiT` are the original checkpoints'.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import attend, attend_self
from .precision import WanRMSNorm, linear, projections
from .rope import apply_rope, rope_rotation

__all__ = ["WanCrossAttention", "WanSelfAttention"]


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def _out(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend=attend) -> torch.Tensor:
        """Attention (q/k cast to v's dtype, as Wan's ``flash_attention``) and the output Linear.

        ``q``: ``(B, Lq, H, D)``, ``k``/``v``: ``(B, Lk, H, D)``; returns ``(B, Lq, H*D)``. ``attend``: the
        attention function (self-attention passes :func:`~pyrflow_fast.wan.attention.attend_self`).
        """
        return linear(self.o, attend(q.to(v.dtype), k.to(v.dtype), v).flatten(2))


class WanSelfAttention(_Attention):
    """Self-attention with q/k RMSNorm across all heads and 3-axis RoPE; q, k, v in one matmul."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, F, S, dim)`` tokens; ``cos``/``sin``: ``(F*S, head_dim/2)``. Returns ``(B, F, S, dim)``."""
        b, f, s, dim = x.shape
        heads = (self.num_heads, dim // self.num_heads)
        q, k, v = projections(x.reshape(b, f * s, dim), (self.q, self.k, self.v))
        rotation = rope_rotation(cos, sin)
        q = apply_rope(self.norm_q(q).unflatten(-1, heads), cos, sin, rotation)
        k = apply_rope(self.norm_k(k).unflatten(-1, heads), cos, sin, rotation)
        return self._out(q, k, v.unflatten(-1, heads), attend_self).reshape(b, f, s, dim)


class WanCrossAttention(_Attention):
    """Cross-attention to the (embedded) text tokens, no mask, no RoPE."""

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded text ``(B, L, dim)``: each ``(B, L, H, D)`` in the values' dtype."""
        heads = (self.num_heads, context.shape[-1] // self.num_heads)
        k, v = projections(context, (self.k, self.v))
        v = v.unflatten(-1, heads)
        return self.norm_k(k).unflatten(-1, heads).to(v.dtype), v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        text_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x``: ``(B, F, S, dim)``; ``context``: ``(B, L, dim)``, or ``text_kv`` from :meth:`text_kv`."""
        b, f, s, dim = x.shape
        k, v = self.text_kv(context) if text_kv is None else text_kv
        q = self.norm_q(linear(self.q, x.reshape(b, f * s, dim))).unflatten(-1, (self.num_heads, -1))
        return self._out(q, k, v).reshape(b, f, s, dim)
