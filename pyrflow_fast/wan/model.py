"""The Wan2.1 text-to-video diffusion transformer (``WanDiT``), with per-frame timesteps.

Module and parameter names follow the original Wan2.1 code, so ``WanDiT.state_dict()`` *is* the
original checkpoint layout. This module is the architecture only: checkpoints in either layout are
read and written by :func:`~pyrflow_fast.wan.checkpoint.load_wan` and
:func:`~pyrflow_fast.wan.checkpoint.save_wan` (:mod:`pyrflow_fast.wan.checkpoint`, which imports
this module; this module does not import it).

Numerics follow Wan2.1: the timestep sinusoid is computed in float64 (``[cos, sin]``, cos first);
the time MLP, the modulation sums, every LayerNorm, the gated residual adds and the whole output
head run in float32 even under bf16/fp16 autocast or with bf16 weights (float64 in a float64 model);
q/k RMSNorm normalises over all heads (before the head split) in float32; RoPE uses Wan's 44/42/42
interleaved split. Attention goes through :func:`pyrflow_fast.wan.attention.attend` (SDPA unless
another backend is selected with :func:`pyrflow_fast.wan.attention.use`).

The forward is one graph under ``torch.compile`` (no data-dependent branch, no host sync): RoPE
tables are range-checked from the grid sizes and cached per shape, q/k/v (and the text k/v) are
one matmul over the concatenated Wan weights, so the state dict keeps Wan's keys.

Per-frame timesteps: ``t`` may be ``(B,)`` or ``(B, F)``. The time embedding is always computed per
frame (a ``(B,)`` timestep is first broadcast to ``(B, F)``), and each frame's modulation is broadcast
to the tokens of that frame (tokens are ordered ``(f, h, w)``). So a ``(B, F)`` timestep with equal
values runs exactly the same operations as the ``(B,)`` one and gives bit-identical output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..contract import frame_timesteps
from .attention import attend, attend_self
from .config import WanConfig, get_config
from .rope import apply_rope
from .rope import rope_tables as _rope_tables

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


def _hi(dtype: torch.dtype) -> torch.dtype:
    """The dtype of Wan's float32 regions for parameters or activations of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in at least float32 (float64 for float64 weights), whatever the autocast state."""
    dtype = _hi(layer.weight.dtype)
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def _layer_norm32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Wan's ``WanLayerNorm``: normalise ``x`` in at least float32 (affine params too), cast back to x.dtype."""
    dtype = _hi(x.dtype)
    weight = None if norm.weight is None else norm.weight.to(dtype)
    bias = None if norm.bias is None else norm.bias.to(dtype)
    return F.layer_norm(x.to(dtype), norm.normalized_shape, weight, bias, norm.eps).type_as(x)


def _autocast(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in the layer's dtype (under autocast: autocast's), so bf16 weights take a float32 stream."""
    return layer(x if _autocast(x) else x.to(layer.weight.dtype))


def _hookless(layer: nn.Module) -> bool:
    return not (layer._forward_hooks or layer._forward_pre_hooks)


def _projections(x: torch.Tensor, layers: Sequence[nn.Linear]) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]`` as one matmul over the concatenated weights.

    The checkpoint keeps Wan's separate ``q``/``k``/``v`` parameters; concatenating them costs one
    copy of the weights per call (measured in ``benchmarks/bench_ops.py``). Layers with hooks (e.g.
    :class:`~pyrflow_fast.train.lora.LoRA` adapters) are called one by one so their hooks run.
    """
    if not all(_hookless(layer) for layer in layers):
        return [_linear(layer, x) for layer in layers]
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    out = F.linear(x if _autocast(x) else x.to(weight.dtype), weight, bias)
    return list(out.split([layer.out_features for layer in layers], dim=-1))


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dimension: normalised in at least float32, cast back, then times ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_hi(x.dtype))
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

    def _out(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend=attend) -> torch.Tensor:
        """Attention (q/k cast to v's dtype, as Wan's ``flash_attention``) and the output Linear.

        ``q``: ``(B, Lq, H, D)``, ``k``/``v``: ``(B, Lk, H, D)``; returns ``(B, Lq, H*D)``. ``attend``: the
        attention function (self-attention passes :func:`~pyrflow_fast.wan.attention.attend_self`).
        """
        return _linear(self.o, attend(q.to(v.dtype), k.to(v.dtype), v).flatten(2))


class WanSelfAttention(_Attention):
    """Self-attention with q/k RMSNorm across all heads and 3-axis RoPE; q, k, v in one matmul."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, F, S, dim)`` tokens; ``cos``/``sin``: ``(F*S, head_dim/2)``. Returns ``(B, F, S, dim)``."""
        b, f, s, dim = x.shape
        heads = (self.num_heads, dim // self.num_heads)
        q, k, v = _projections(x.reshape(b, f * s, dim), (self.q, self.k, self.v))
        q = apply_rope(self.norm_q(q).unflatten(-1, heads), cos, sin)
        k = apply_rope(self.norm_k(k).unflatten(-1, heads), cos, sin)
        return self._out(q, k, v.unflatten(-1, heads), attend_self).reshape(b, f, s, dim)


class WanCrossAttention(_Attention):
    """Cross-attention to the (embedded) text tokens, no mask, no RoPE."""

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded text ``(B, L, dim)``: each ``(B, L, H, D)`` in the values' dtype."""
        heads = (self.num_heads, context.shape[-1] // self.num_heads)
        k, v = _projections(context, (self.k, self.v))
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
        q = self.norm_q(_linear(self.q, x.reshape(b, f * s, dim))).unflatten(-1, (self.num_heads, -1))
        return self._out(q, k, v).reshape(b, f, s, dim)


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
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Apply the block.

        :param x: tokens ``(B, F, S, dim)`` (``S`` tokens per frame).
        :param e0: per-frame modulation input ``(B, F, 6, dim)`` in the float32 regions' dtype (float32;
            float64 for a float64 model).
        :param context: embedded text ``(B, L, dim)`` (unused when ``text_kv`` is given).
        :param cos: RoPE cosines ``(F*S, head_dim/2)``.
        :param sin: RoPE sines, same shape.
        :param text_kv: the cross-attention's precomputed text keys and values
            (:meth:`WanCrossAttention.text_kv`).
        :returns: updated tokens in ``e0``'s dtype (the float32 residual stream of Wan under autocast).
        """
        hi = e0.dtype
        m = (self.modulation.to(hi).unsqueeze(0) + e0).unsqueeze(3)  # (B, F, 6, 1, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = m.unbind(2)
        y = self.self_attn(torch.addcmul(shift_sa, _layer_norm32(x, self.norm1).to(hi), 1 + scale_sa), cos, sin)
        x = torch.addcmul(x.to(hi), y.to(hi), gate_sa)
        x = x + self.cross_attn(_layer_norm32(x, self.norm3), context, text_kv).to(hi)
        h = torch.addcmul(shift_ff, _layer_norm32(x, self.norm2), 1 + scale_ff)
        y = _linear(self.ffn[2], self.ffn[1](_linear(self.ffn[0], h)))
        return torch.addcmul(x, y.to(hi), gate_ff)


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
        # x: (B, F, S, dim); e: (B, F, dim) in the float32 regions' dtype, which everything here runs in.
        m = (self.modulation.to(e.dtype).unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3)  # (B, F, 2, 1, dim)
        shift, scale = m.unbind(2)
        return torch.addcmul(shift, _layer_norm32(x.to(e.dtype), self.norm), 1 + scale)


class WanDiT(nn.Module):
    """Wan2.1 text-to-video diffusion transformer.

    Call ``model(x, t, context)`` with latents ``x`` ``(B, C, F, H, W)``, timesteps ``t`` (Wan's
    ``1000 * sigma``) of shape ``(B,)`` or per frame ``(B, F)``, and text embeddings ``context``
    ``(B, L, text_dim)`` with ``L <= text_len`` (zero-padded to ``text_len`` like Wan). Returns the
    predicted velocity ``(B, out_dim, F, H, W)`` in float32 (float64 for a float64 model). ``F, H, W``
    must be divisible by the patch.

    Precision, as Wan2.1 under autocast: the matmuls (patch and text embeddings, attention, FFN) run
    in the weights' dtype or, under ``torch.autocast``, in autocast's; the time embedding, the
    modulation, every norm, the residual stream and the head run in float32. So bf16 inference
    works either as float32 weights under ``torch.autocast(device, torch.bfloat16)`` or with bf16
    weights (:meth:`to_mixed_precision` keeps the float32 regions' parameters in float32, as Wan's
    master weights are; a plain ``model.to(torch.bfloat16)`` also runs). ``model.double()`` runs
    everything in float64, for reference tests.

    Inference helpers: :meth:`text_cache` computes the cross-attention's text keys and values once
    per context; :meth:`compile_blocks` compiles each block; the attention kernel is chosen with
    :func:`pyrflow_fast.wan.attention.use`.

    A new model has Wan's initialisation (zero output head); load a checkpoint in either layout
    with :func:`~pyrflow_fast.wan.checkpoint.load_wan` and save one with
    :func:`~pyrflow_fast.wan.checkpoint.save_wan`.

    :param config: a :class:`~pyrflow_fast.wan.config.WanConfig` or a name from
        :data:`~pyrflow_fast.wan.config.CONFIGS` (default: Wan2.1-T2V-1.3B).
    """

    FLOAT32_PARAMETERS: tuple[str, ...] = (
        "time_embedding.",
        "time_projection.",
        "modulation",
        "norm",
        "head.head.",
    )
    """Parameter-name fragments of the float32 regions (:meth:`to_mixed_precision` keeps them float32)."""

    _ROPE_CACHE_SIZE = 8
    _TEXT_CACHE_SIZE = 4

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
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text_cache: dict[tuple, tuple[torch.Tensor, list]] | None = None
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

    def to_mixed_precision(self, dtype: torch.dtype = torch.bfloat16) -> WanDiT:
        """Cast the matmul weights to ``dtype`` in place, keeping :data:`FLOAT32_PARAMETERS` in float32.

        The result runs without autocast: the blocks' matmuls in ``dtype``, the time embedding,
        modulation, norms and head in float32 from float32 weights. Returns ``self``.
        """
        for name, param in self.named_parameters():
            keep = any(fragment in name for fragment in self.FLOAT32_PARAMETERS)
            param.data = param.data.to(torch.float32 if keep else dtype)
        return self

    def compile_blocks(self, mode: str | None = "max-autotune", **kwargs: Any) -> WanDiT:
        """``torch.compile`` each block in place (``fullgraph=True``, ``dynamic=False``; ``kwargs`` go to
        ``torch.compile``, e.g. ``backend=``). Returns ``self``.

        Per-block compilation keeps the forward's Python (shape checks, the RoPE and text caches)
        eager. The blocks share their code, so they share their graphs: one static graph per token
        shape, batch and text path (embedded text, or cached K/V), which is 12 for a 3-stage
        pyramid with batched CFG; dynamo's ``recompile_limit`` (8 by default, process-wide) is raised
        to at least 64 so that they all fit. ``mode="max-autotune"`` tunes the matmuls and uses CUDA
        graphs on a GPU.
        """
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        kwargs.setdefault("dynamic", False)
        for block in self.blocks:
            block.compile(mode=mode, fullgraph=True, **kwargs)
        return self

    @contextlib.contextmanager
    def text_cache(self) -> Iterator[None]:
        """Inside the ``with`` block, compute the text keys and values of each context tensor only once.

        Entries are keyed on the ``context`` tensor's identity and version (an in-place change
        recomputes), its device and the autocast state; the cache is used only while gradients are
        disabled, and the weights must not change inside the block. A sampler that passes the same
        context tensor to every step (as :func:`pyrflow_fast.samplers.guided` does for its batched
        CFG pair) then runs the text MLP and the cross-attention K/V projections once per
        generation instead of once per forward. It holds at most a few contexts (least recently
        used dropped) and is emptied on exit.
        """
        previous, self._text_cache = self._text_cache, {}
        try:
            yield
        finally:
            self._text_cache = previous

    # ---------------------------------------------------------------------------- pieces
    def embed_time(self, t: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding in float32 (float64 for float64 weights) whatever the autocast state.

        :param t: timesteps ``(B, F)``.
        :param offset: ``(dim,)`` added to ``e`` before the projection to ``e0`` (PPF's stage embedding).
        :returns: ``e`` ``(B, F, dim)`` (used by the head) and ``e0`` ``(B, F, 6, dim)`` (blocks).
        """
        with torch.autocast(device_type=t.device.type, enabled=False):
            s = sinusoidal_embedding(t, self.config.freq_dim).to(_hi(self.time_embedding[0].weight.dtype))
            e = _linear32(self.time_embedding[2], F.silu(_linear32(self.time_embedding[0], s)))
            if offset is not None:
                e = e + offset.to(e.dtype)
            e0 = _linear32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, self.config.dim))
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, L, text_dim)`` to ``text_len`` tokens and apply the text MLP: ``(B, text_len, dim)``."""
        b, length, width = context.shape
        if width != self.config.text_dim:
            raise ValueError(f"context width {width} != text_dim {self.config.text_dim}")
        if length > self.config.text_len:
            raise ValueError(f"context has {length} tokens, more than text_len={self.config.text_len}")
        if length < self.config.text_len:
            context = F.pad(context, (0, 0, 0, self.config.text_len - length))
        first, act, second = self.text_embedding
        return _linear(second, act(_linear(first, context)))

    def text_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every block's cross-attention keys and values of ``context`` ``(B, L, text_dim)`` from the
        :meth:`text_cache`, computed on a miss; ``None`` outside it, while gradients are enabled or
        while ``torch.compile`` traces (the blocks then compute them from the embedded text)."""
        cache = self._text_cache
        if cache is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        device = context.device.type
        version = -1 if context.is_inference() else context._version  # inference tensors have no version
        key = (id(context), version, context.device, torch.is_autocast_enabled(device))
        key += (torch.get_autocast_dtype(device),)
        hit = cache.pop(key, None)
        if hit is None or hit[0] is not context:
            ctx = self.embed_text(context)
            hit = (context, [block.cross_attn.text_kv(ctx) for block in self.blocks])
        cache[key] = hit  # the context itself is kept, so its id cannot be reused while cached
        while len(cache) > self._TEXT_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        return hit[1]

    def rope_tables(
        self,
        grid: Sequence[int],
        rope: str = "integer",
        full_size: Sequence[int] | None = None,
        device: Any = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin ``(F'*H'*W', head_dim / 2)`` in ``dtype`` for a patch grid ``(F', H', W')``.

        Cached per (grid, positions, device, dtype) in eager mode; range-checked from the sizes only
        (:func:`~pyrflow_fast.wan.rope.rope_tables`), so the forward never syncs with the host.

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
        cfg = self.config
        args = (tuple(int(n) for n in grid), cfg.head_dim, cfg.rope_theta, full_grid, cfg.rope_max_positions)
        if torch.compiler.is_compiling():  # traced once per shape anyway; a dict of tensors would not trace
            return _rope_tables(*args, device=device, dtype=dtype)
        key = (*args, torch.device(device) if device is not None else torch.device("cpu"), dtype)
        if key not in self._rope_cache:
            if len(self._rope_cache) >= self._ROPE_CACHE_SIZE:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = _rope_tables(*args, device=device, dtype=dtype)
        return self._rope_cache[key]

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
        :returns: velocity ``(B, out_dim, F, H, W)``, float32 (float64 for a float64 model).
        """
        grid, t = self.check_input(x, t)
        e, e0 = self.embed_time(t)
        cos, sin = self.rope_tables(grid, rope, full_size, device=x.device, dtype=e.dtype)
        return self.predict(x, context, e, e0, cos, sin, self.config.patch_size)

    def check_input(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[tuple[int, int, int], torch.Tensor]:
        """The patch grid ``(F', H', W')`` of latents ``x`` and the per-frame timesteps ``(B, F')`` of ``t``;
        ValueError for a wrong channel count or a size the patch does not divide."""
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be (B, {cfg.in_dim}, F, H, W), got {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size {(f, h, w)} is not divisible by the patch {cfg.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        return grid, frame_timesteps(t, b, grid[0], x.device)

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
        ``patch``, patch ``embed`` and output ``head`` (default: the model's). The result has ``e``'s dtype.
        """
        tokens = self.run_blocks(self.patchify(x, embed), context, e0, cos, sin)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # (B, F', S, pt*ph*pw*C) in e's dtype
            out = self.head(tokens, e) if head is None else _linear32(head, self.head.modulate(tokens, e))
        return self.unpatchify(out, x.shape[2:], patch)

    def patchify(self, x: torch.Tensor, embed: nn.Conv3d | None = None) -> torch.Tensor:
        """Patch tokens ``(B, F', S, dim)`` of latents ``x`` ``(B, in_dim, F, H, W)``, ordered ``(f, h, w)``."""
        embed = self.patch_embedding if embed is None else embed
        tokens = embed(x if _autocast(x) else x.to(embed.weight.dtype))  # (B, dim, F', H', W')
        return tokens.flatten(3).permute(0, 2, 3, 1)

    def run_blocks(
        self, tokens: torch.Tensor, context: torch.Tensor, e0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """The transformer blocks on ``tokens`` ``(B, F', S, dim)`` (any subset of each frame's tokens, with
        the matching RoPE rows ``cos``/``sin``), with the text keys and values of ``context`` computed once."""
        kvs = self.text_kv(context)
        ctx = self.embed_text(context) if kvs is None else None
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            kv = None if kvs is None else kvs[i]
            if use_ckpt:
                tokens = checkpoint(block, tokens, e0, ctx, cos, sin, kv, use_reentrant=False)
            else:
                tokens = block(tokens, e0, ctx, cos, sin, kv)
        return tokens

    def unpatchify(self, out: torch.Tensor, size: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
        """The head's output ``(B, F', S, pt*ph*pw*C)`` as a latent ``(B, out_dim, F, H, W)`` of ``size``."""
        b, (f, h, w) = out.shape[0], size
        grid = [n // q for n, q in zip((f, h, w), patch, strict=True)]
        out = out.reshape(b, *grid, *patch, self.config.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, self.config.out_dim, f, h, w)

    def num_parameters(self) -> int:
        """Total number of parameter elements (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())
