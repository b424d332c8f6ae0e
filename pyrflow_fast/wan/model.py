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
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..contract import frame_timesteps
from .config import WanConfig, get_config
from .layers import WanCrossAttention, WanSelfAttention
from .precision import WanRMSNorm, autocast_enabled, gelu_tanh, hi_dtype, layer_norm32, linear, linear32
from .rope import RopeTableCache, full_patch_grid
from .text_cache import TextKVCache

__all__ = [
    "TokenSplit",
    "WanDiT",
    "WanBlock",
    "WanSelfAttention",
    "WanCrossAttention",
    "WanRMSNorm",
    "sinusoidal_embedding",
]

TokenSplit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]], torch.Tensor]
"""``split(tokens, cos, sin, body) -> out`` of :meth:`WanDiT.split_tokens`."""


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


def _modulation(rows: int, dim: int) -> nn.Parameter:
    """Wan's modulation table ``(1, rows, dim)``, normal / sqrt(dim) (``torch.randn``'s draw); empty on meta."""
    table = torch.empty(1, rows, dim)
    return nn.Parameter(table if table.is_meta else table.normal_().div_(dim**0.5))


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
        self.modulation = _modulation(6, dim)

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
        y = self.self_attn(torch.addcmul(shift_sa, layer_norm32(x, self.norm1).to(hi), 1 + scale_sa), cos, sin)
        x = torch.addcmul(x.to(hi), y.to(hi), gate_sa)
        x = x + self.cross_attn(layer_norm32(x, self.norm3), context, text_kv).to(hi)
        h = torch.addcmul(shift_ff, layer_norm32(x, self.norm2), 1 + scale_ff)
        y = linear(self.ffn[2], gelu_tanh(linear(self.ffn[0], h)))  # ffn[1]: Wan's GELU module, kept for its name
        return torch.addcmul(x, y.to(hi), gate_ff)


class _Head(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.patch_volume * cfg.out_dim)
        self.modulation = _modulation(2, cfg.dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return linear32(self.head, self.modulate(x, e))

    def modulate(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The head's input to its output Linear (separate: PPF's coarser stages have their own Linear)."""
        # x: (B, F, S, dim); e: (B, F, dim) in the float32 regions' dtype, which everything here runs in.
        m = (self.modulation.to(e.dtype).unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3)  # (B, F, 2, 1, dim)
        shift, scale = m.unbind(2)
        return torch.addcmul(shift, layer_norm32(x.to(e.dtype), self.norm), 1 + scale)


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
        self._rope_cache = RopeTableCache(self._ROPE_CACHE_SIZE)
        self._text_cache: TextKVCache | None = None
        self._token_split: TokenSplit | None = None
        if not self.head.head.weight.is_meta:  # on meta there is nothing to fill (and the init costs ~1 s of imports)
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

        Entries are keyed as :class:`~pyrflow_fast.wan.text_cache.TextKVCache` says (an in-place change
        recomputes); the cache is used only while gradients are disabled, and the weights must not
        change inside the block. A sampler that passes the same
        context tensor to every step (as :func:`pyrflow_fast.samplers.guided` does for its batched
        CFG pair) then runs the text MLP and the cross-attention K/V projections once per
        generation instead of once per forward. It holds at most a few contexts (least recently
        used dropped) and is emptied on exit. With FSDP-sharded blocks it caches nothing: the keys must be
        computed inside each block's forward, where FSDP gathers the block's weights.
        """
        fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: no block is sharded
        if fsdp is not None and any(isinstance(block, fsdp.FSDPModule) for block in self.blocks):
            yield
            return
        previous, self._text_cache = self._text_cache, TextKVCache(self._TEXT_CACHE_SIZE)
        try:
            yield
        finally:
            self._text_cache = previous

    @contextlib.contextmanager
    def split_tokens(self, split: TokenSplit) -> Iterator[None]:
        """Inside the ``with`` block, every forward (:meth:`predict`: PPF's stages too) runs its blocks and head
        as ``split(tokens, cos, sin, body)`` (nests; restores on exit).

        ``split`` gets the patch tokens ``(B, F', S, dim)``, their RoPE tables ``(F'*S, head_dim/2)`` and
        ``body(tokens, cos, sin)``, the blocks plus the head on any subset of each frame's tokens (given the
        matching table rows), and returns ``body``'s output for all tokens, ``(B, F', S, pt*ph*pw*C)``. Context
        parallelism (:class:`~pyrflow_fast.parallel.ContextParallelWan`) runs ``body`` on a shard and gathers.
        """
        previous, self._token_split = self._token_split, split
        try:
            yield
        finally:
            self._token_split = previous

    # ---------------------------------------------------------------------------- pieces
    def embed_time(self, t: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding in float32 (float64 for float64 weights) whatever the autocast state.

        :param t: timesteps ``(B, F)``.
        :param offset: ``(dim,)`` added to ``e`` before the projection to ``e0`` (PPF's stage embedding).
        :returns: ``e`` ``(B, F, dim)`` (used by the head) and ``e0`` ``(B, F, 6, dim)`` (blocks).
        """
        with torch.autocast(device_type=t.device.type, enabled=False):
            s = sinusoidal_embedding(t, self.config.freq_dim).to(hi_dtype(self.time_embedding[0].weight.dtype))
            e = linear32(self.time_embedding[2], F.silu(linear32(self.time_embedding[0], s)))
            if offset is not None:
                e = e + offset.to(e.dtype)
            e0 = linear32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, self.config.dim))
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
        first, _, second = self.text_embedding  # the middle module is Wan's tanh GELU
        return linear(second, gelu_tanh(linear(first, context)))

    def text_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every block's cross-attention keys and values of ``context`` ``(B, L, text_dim)`` from the
        :meth:`text_cache`, computed on a miss; ``None`` outside it, while gradients are enabled or
        while ``torch.compile`` traces (the blocks then compute them from the embedded text)."""
        cache = self._text_cache
        if cache is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        return cache.get(context, self._text_kvs)

    def _text_kvs(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ctx = self.embed_text(context)
        return [block.cross_attn.text_kv(ctx) for block in self.blocks]

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
        cfg = self.config
        full_grid = full_patch_grid(rope, full_size, cfg.patch_size)
        return self._rope_cache.tables(
            grid, cfg.head_dim, cfg.rope_theta, full_grid, cfg.rope_max_positions, device, dtype
        )

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
        Inside :meth:`split_tokens` the blocks and the head run through its ``split``.
        """

        def body(tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            tokens = self.run_blocks(tokens, context, e0, cos, sin)
            with torch.autocast(device_type=x.device.type, enabled=False):  # (B, F', S, pt*ph*pw*C) in e's dtype
                return self.head(tokens, e) if head is None else linear32(head, self.head.modulate(tokens, e))

        tokens, split = self.patchify(x, embed), self._token_split
        out = body(tokens, cos, sin) if split is None else split(tokens, cos, sin, body)
        return self.unpatchify(out, x.shape[2:], patch)

    def patchify(self, x: torch.Tensor, embed: nn.Conv3d | None = None) -> torch.Tensor:
        """Patch tokens ``(B, F', S, dim)`` of latents ``x`` ``(B, in_dim, F, H, W)``, ordered ``(f, h, w)``."""
        embed = self.patch_embedding if embed is None else embed
        tokens = embed(x if autocast_enabled(x) else x.to(embed.weight.dtype))  # (B, dim, F', H', W')
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
