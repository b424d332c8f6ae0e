"""The Wan2.1 text-to-video diffusion transformer (``WanDiT``), with per-frame timesteps.

Module and parameter names follow the original Wan2.1 code, so ``WanDiT.state_dict()`` *is* the
original checkpoint layout. This module is the architecture only: checkpoints in either layout are
read and written by :func:`~pyrflow_fast.wan.checkpoint.load_wan` and
:func:`~pyrflow_fast.wan.checkpoint.save_wan` (:mod:`pyrflow_fast.wan.checkpoint`, which imports
this module; this module does not import it).

Numerics follow Wan2.1: the timestep sinusoid is computed in float64 (``[cos, sin]``, cos first);
the time MLP, the modulation sums, every LayerNorm, the gated residual adds and the whole output
head run in float32 even under bf16/fp16 autocast; q/k RMSNorm normalises over all heads (before the
head split) in float32; RoPE uses Wan's 44/42/42 interleaved split. Attention goes through
``torch.nn.functional.scaled_dot_product_attention``.

Per-frame timesteps: ``t`` may be ``(B,)`` or ``(B, F)``. The time embedding is always computed per
frame (a ``(B,)`` timestep is first broadcast to ``(B, F)``), and each frame's modulation is broadcast
to the tokens of that frame (tokens are ordered ``(f, h, w)``). So a ``(B, F)`` timestep with equal
values runs exactly the same operations as the ``(B,)`` one and gives bit-identical output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..contract import frame_timesteps
from .config import WanConfig, get_config
from .rope import apply_rope, grid_positions, rope_cos_sin

__all__ = ["WanDiT", "WanBlock", "WanSelfAttention", "WanCrossAttention", "WanRMSNorm", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep sinusoid in float64: ``[cos(t w), sin(t w)]`` with ``w_i = 10000^(-i/(dim/2))``.

    :param t: timesteps of any shape (any real dtype).
    :param dim: embedding width (even).
    :returns: float64 tensor of shape ``t.shape + (dim,)``.
    """
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = pos[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in float32 whatever the parameter dtype or autocast state."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def _layer_norm32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Wan's ``WanLayerNorm``: normalise ``x.float()`` (affine params in float32), cast back to x.dtype."""
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).type_as(x)


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dimension: normalised in float32, cast back, then times ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


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

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, Lq, H, D), k/v: (B, Lk, H, D) -> (B, Lq, H*D); q and k are cast to v's dtype.
        out = F.scaled_dot_product_attention(
            q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2).flatten(2)


class WanSelfAttention(_Attention):
    """Self-attention with q/k RMSNorm across all heads and 3-axis RoPE."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, F, S, dim)`` tokens; ``cos``/``sin``: ``(F*S, head_dim/2)``."""
        b, f, s, dim = x.shape
        heads = (self.num_heads, dim // self.num_heads)
        q = self.norm_q(self.q(x)).reshape(b, f * s, *heads)
        k = self.norm_k(self.k(x)).reshape(b, f * s, *heads)
        v = self.v(x).reshape(b, f * s, *heads)
        out = self._attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        return self.o(out.reshape(b, f, s, dim))


class WanCrossAttention(_Attention):
    """Cross-attention to the (embedded) text tokens, no mask, no RoPE."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, F, S, dim)``; ``context``: ``(B, L, dim)``."""
        b, f, s, dim = x.shape
        heads = (self.num_heads, dim // self.num_heads)
        q = self.norm_q(self.q(x)).reshape(b, f * s, *heads)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        v = self.v(context).unflatten(-1, heads)
        return self.o(self._attend(q, k, v).reshape(b, f, s, dim))


class WanBlock(nn.Module):
    """One Wan2.1 transformer block (self-attention, cross-attention, FFN; adaLN on SA and FFN)."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Apply the block.

        :param x: tokens ``(B, F, S, dim)`` (``S`` tokens per frame).
        :param e0: per-frame float32 modulation input ``(B, F, 6, dim)``.
        :param context: embedded text ``(B, L, dim)``.
        :param cos: RoPE cosines ``(F*S, head_dim/2)``.
        :param sin: RoPE sines, same shape.
        :returns: updated tokens (float32 residual stream, as in Wan under autocast).
        """
        m = (self.modulation.float().unsqueeze(0) + e0).unsqueeze(3)  # (B, F, 6, 1, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = m.unbind(2)
        y = self.self_attn(_layer_norm32(x, self.norm1).float() * (1 + scale_sa) + shift_sa, cos, sin)
        x = x.float() + y.float() * gate_sa
        x = x + self.cross_attn(_layer_norm32(x, self.norm3), context)
        y = self.ffn(_layer_norm32(x, self.norm2).float() * (1 + scale_ff) + shift_ff)
        return x.float() + y.float() * gate_ff


class _Head(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.patch_volume * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return _linear32(self.head, self.modulate(x, e))

    def modulate(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The head's input to its output Linear (separate: PPF's coarser stages have their own Linear)."""
        # x: (B, F, S, dim); e: (B, F, dim) float32. Everything here runs in float32.
        m = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3)  # (B, F, 2, 1, dim)
        shift, scale = m.unbind(2)
        return _layer_norm32(x.float(), self.norm) * (1 + scale) + shift


class WanDiT(nn.Module):
    """Wan2.1 text-to-video diffusion transformer.

    Call ``model(x, t, context)`` with latents ``x`` ``(B, C, F, H, W)``, timesteps ``t`` (Wan's
    ``1000 * sigma``) of shape ``(B,)`` or per frame ``(B, F)``, and text embeddings ``context``
    ``(B, L, text_dim)`` with ``L <= text_len`` (zero-padded to ``text_len`` like Wan). Returns the
    predicted velocity ``(B, out_dim, F, H, W)`` in float32. ``F, H, W`` must be divisible by the patch.

    For bf16/fp16 inference run under ``torch.autocast``; weights may be float32 (as Wan ships
    them) or low precision (the residual stream stays float32, so low-precision weights need
    autocast).

    A new model has Wan's initialisation (zero output head); load a checkpoint in either layout
    with :func:`~pyrflow_fast.wan.checkpoint.load_wan` and save one with
    :func:`~pyrflow_fast.wan.checkpoint.save_wan`.

    :param config: a :class:`~pyrflow_fast.wan.config.WanConfig` or a name from
        :data:`~pyrflow_fast.wan.config.CONFIGS` (default: Wan2.1-T2V-1.3B).
    """

    def __init__(self, config: WanConfig | str = "wan2.1-t2v-1.3b") -> None:
        super().__init__()
        cfg = get_config(config)
        self.config = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = _Head(cfg)
        self.gradient_checkpointing = False
        self.init_weights()

    # ------------------------------------------------------------------------------ set-up
    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan2.1's initialisation: xavier-uniform Linears and patch embedding, zero biases,
        normal(0.02) text/time embeddings, zero output head weight."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for module in seq:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (only while gradients are enabled)."""
        self.gradient_checkpointing = bool(enabled)

    # ---------------------------------------------------------------------------- pieces
    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding, float32 whatever the autocast state.

        :param t: timesteps ``(B, F)``.
        :returns: ``e`` ``(B, F, dim)`` (used by the head) and ``e0`` ``(B, F, 6, dim)`` (blocks).
        """
        with torch.autocast(device_type=t.device.type, enabled=False):
            s = sinusoidal_embedding(t, self.config.freq_dim).float()
            e = _linear32(self.time_embedding[2], F.silu(_linear32(self.time_embedding[0], s)))
            e0 = _linear32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, self.config.dim))
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, L, text_dim)`` to ``text_len`` tokens and apply the text MLP."""
        b, length, width = context.shape
        if width != self.config.text_dim:
            raise ValueError(f"context width {width} != text_dim {self.config.text_dim}")
        if length > self.config.text_len:
            raise ValueError(f"context has {length} tokens, more than text_len={self.config.text_len}")
        if length < self.config.text_len:
            context = F.pad(context, (0, 0, 0, self.config.text_len - length))
        return self.text_embedding(context)

    def rope_tables(
        self, grid: Sequence[int], rope: str = "integer", full_size: Sequence[int] | None = None, device: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for a patch grid ``(F', H', W')``.

        :param rope: ``"integer"`` (Wan's grid) or ``"scaled"`` (positions on the full-resolution grid).
        :param full_size: latent size ``(F, H, W)`` of the full-resolution stage (``"scaled"`` only).
        """
        pt, ph, pw = self.config.patch_size
        if rope == "integer":
            full_grid = None
        elif rope == "scaled":
            if full_size is None:
                raise ValueError("rope='scaled' needs full_size=(F, H, W), the full-resolution latent size")
            full_grid = (full_size[0] // pt, full_size[1] // ph, full_size[2] // pw)
        else:
            raise ValueError(f"rope must be 'integer' or 'scaled', got {rope!r}")
        pos = grid_positions(grid, full_grid, device=device)
        return rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, self.config.rope_max_positions)

    # ---------------------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        *,
        rope: str = "integer",
        full_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Predict the velocity.

        :param x: latents ``(B, in_dim, F, H, W)``.
        :param t: timesteps in ``[0, 1000]``: a number, ``(B,)`` or per frame ``(B, F // pt)``.
        :param context: text embeddings ``(B, L, text_dim)``.
        :param rope: ``"integer"`` or ``"scaled"`` RoPE positions (see :mod:`pyrflow_fast.wan.rope`).
        :param full_size: full-resolution latent size ``(F, H, W)`` for ``rope="scaled"``.
        :returns: float32 velocity ``(B, out_dim, F, H, W)``.
        """
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be (B, {cfg.in_dim}, F, H, W), got {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size {(f, h, w)} is not divisible by the patch {cfg.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        t = frame_timesteps(t, b, grid[0], x.device)

        cos, sin = self.rope_tables(grid, rope, full_size, device=x.device)
        e, e0 = self.embed_time(t)
        return self.predict(x, context, e, e0, cos, sin, cfg.patch_size)

    def predict(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        e: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        patch: Sequence[int],
        *,
        embed: nn.Conv3d | None = None,
        head: nn.Linear | None = None,
    ) -> torch.Tensor:
        """The forward pass after the time embedding and RoPE tables: patchify, blocks, head, unpatchify.

        Separate so that :class:`~pyrflow_fast.ppf.PPFWan` runs its stages through the same blocks with its own
        ``patch``, patch ``embed`` and output ``head`` (default: the model's).
        """
        b, _, f, h, w = x.shape
        grid = [n // q for n, q in zip((f, h, w), patch, strict=True)]
        ctx = self.embed_text(context)
        tokens = (self.patch_embedding if embed is None else embed)(x)  # (B, dim, F', H', W')
        tokens = tokens.flatten(3).permute(0, 2, 3, 1)  # (B, F', S, dim), tokens ordered (f, h, w)

        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                tokens = checkpoint(block, tokens, e0, ctx, cos, sin, use_reentrant=False)
            else:
                tokens = block(tokens, e0, ctx, cos, sin)

        with torch.autocast(device_type=x.device.type, enabled=False):
            # (B, F', S, pt*ph*pw*C), float32
            out = self.head(tokens, e) if head is None else _linear32(head, self.head.modulate(tokens, e))
        out = out.reshape(b, *grid, *patch, self.config.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, self.config.out_dim, f, h, w)

    def num_parameters(self) -> int:
        """Total number of parameter elements (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())
