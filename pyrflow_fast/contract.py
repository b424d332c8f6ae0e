"""The backbone contract used by all pyramid code, and adapters that satisfy it.

A *backbone* maps

- a natural-scale latent ``x`` of shape ``(B, C, F, H, W)`` (the pyramid divides its stage sample by
  ``c = g (1 - sigma) + sigma`` before calling, theory §3.1),
- per-frame timesteps ``t`` of shape ``(B, F)`` with ``t = 1000 * varsigma`` (a ``(B,)`` tensor or a
  number is broadcast to every frame),
- text embeddings ``context`` of shape ``(B, L, text_dim)``,

to the predicted natural velocity ``v_hat`` of shape ``(B, C, F, H, W)`` in float32. Optionally it
takes ``full_size``, the full-resolution latent size ``(F, H, W)``, which backbones with
full-resolution-scaled RoPE positions need at coarse stages.

:class:`Backbone` is the interface. :class:`WanBackbone` wraps :class:`pyrflow_fast.wan.WanDiT`;
:class:`DiffusersWanBackbone` wraps a diffusers ``WanTransformer3DModel`` instance so that it can be
plugged in directly.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Backbone", "WanBackbone", "DiffusersWanBackbone", "frame_timesteps"]


def frame_timesteps(t: torch.Tensor | float, batch: int, frames: int, device: Any = None) -> torch.Tensor:
    """Normalise ``t`` (a number, ``(B,)`` or ``(B, F)``) to shape ``(B, F)``; ValueError otherwise.

    >>> frame_timesteps(500.0, 2, 3).tolist()
    [[500.0, 500.0, 500.0], [500.0, 500.0, 500.0]]
    """
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim == 1 and t.shape[0] == batch:
        return t[:, None].expand(batch, frames)
    if t.ndim == 2 and tuple(t.shape) == (batch, frames):
        return t
    raise ValueError(f"t has shape {tuple(t.shape)}; expected a number, ({batch},) or ({batch}, {frames})")


def _check_temporal_patch(patch_size: Sequence[int]) -> None:
    if patch_size[0] != 1:
        raise ValueError(
            f"per-frame timesteps need a temporal patch of 1 (as in Wan2.1), got patch {tuple(patch_size)}"
        )


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """Interface: ``backbone(x, t, context, full_size=None) -> v_hat``.

    Subclasses implement :meth:`velocity`; :meth:`forward` validates shapes, normalises ``t`` to
    ``(B, F)`` and checks the output. Attributes ``in_channels``, ``out_channels`` and
    ``patch_size`` describe what the backbone accepts (F, H, W divisible by ``patch_size``).
    """

    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]

    @abc.abstractmethod
    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, full_size: Sequence[int] | None
    ) -> torch.Tensor:
        """Backbone-specific computation; ``t`` is already ``(B, F)``."""

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        full_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Predict the natural velocity ``(B, out_channels, F, H, W)`` (float32).

        :param x: natural-scale latent ``(B, in_channels, F, H, W)``.
        :param t: ``1000 * varsigma``: a number, ``(B,)`` or per frame ``(B, F)``.
        :param context: text embeddings ``(B, L, text_dim)``.
        :param full_size: full-resolution latent size ``(F, H, W)`` (used by scaled RoPE).
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, F, H, W), got {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        if any(n % p for n, p in zip((f, h, w), self.patch_size, strict=True)):
            raise ValueError(f"latent size {(f, h, w)} is not divisible by the patch {self.patch_size}")
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"context must be (B={b}, L, D), got {tuple(context.shape)}")
        v = self.velocity(x, frame_timesteps(t, b, f, x.device), context, full_size)
        return v.float()


class WanBackbone(Backbone):
    """The contract over :class:`pyrflow_fast.wan.WanDiT`.

    :param model: the transformer.
    :param rope: ``"integer"`` (Wan's positions at every stage) or ``"scaled"`` (coarse stages get
        positions on the full-resolution grid; ``full_size`` must then be passed at coarse stages and
        defaults to the input size).
    """

    def __init__(self, model: nn.Module, rope: str = "integer") -> None:
        super().__init__()
        if rope not in ("integer", "scaled"):
            raise ValueError(f"rope must be 'integer' or 'scaled', got {rope!r}")
        self.model = model
        self.rope = rope
        cfg = model.config
        self.in_channels, self.out_channels, self.patch_size = cfg.in_dim, cfg.out_dim, tuple(cfg.patch_size)
        _check_temporal_patch(self.patch_size)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, full_size: Sequence[int] | None
    ) -> torch.Tensor:
        if self.rope == "scaled":
            size = tuple(full_size) if full_size is not None else tuple(x.shape[2:])
            return self.model(x, t, context, rope="scaled", full_size=size)
        return self.model(x, t, context)


class DiffusersWanBackbone(Backbone):
    """The contract over a diffusers ``WanTransformer3DModel`` instance.

    diffusers 0.42 accepts a timestep per *token* (shape ``(B, L)``, added for Wan2.2 TI2V). A
    per-frame ``t`` whose frames are all equal is passed as ``(B,)`` (diffusers' ordinary path);
    otherwise it is repeated over the ``H' W'`` tokens of each frame and passed as ``(B, L)``, which
    costs one time-MLP evaluation per token. If an installed diffusers lacks the per-token path
    (its ``forward`` has no 2-D timestep branch) unequal per-frame timesteps raise ValueError.

    Only Wan's integer RoPE positions are available (``full_size`` is accepted and ignored).
    Contexts shorter than ``text_len`` are zero-padded, as Wan's own model does.

    :param transformer: a ``diffusers.WanTransformer3DModel``.
    :param text_len: pad contexts to this many tokens (``None``: no padding).
    :param per_token_timesteps: whether the transformer accepts ``(B, L)`` timesteps.
    """

    def __init__(self, transformer: nn.Module, text_len: int | None = 512, per_token_timesteps: bool = True) -> None:
        super().__init__()
        self.transformer = transformer
        cfg = transformer.config
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels or cfg.in_channels)
        self.patch_size = tuple(int(p) for p in cfg.patch_size)
        _check_temporal_patch(self.patch_size)
        self.text_len = text_len
        self.per_token_timesteps = per_token_timesteps

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, full_size: Sequence[int] | None
    ) -> torch.Tensor:
        if self.text_len is not None:
            if context.shape[1] > self.text_len:
                raise ValueError(f"context has {context.shape[1]} tokens, more than text_len={self.text_len}")
            context = F.pad(context, (0, 0, 0, self.text_len - context.shape[1]))
        _, ph, pw = self.patch_size
        tokens_per_frame = (x.shape[3] // ph) * (x.shape[4] // pw)
        if bool((t == t[:, :1]).all()):
            timestep = t[:, 0]
        elif self.per_token_timesteps:
            timestep = t.repeat_interleave(tokens_per_frame, dim=1)
        else:
            raise ValueError(
                "this diffusers transformer takes one timestep per sample; per-frame t must have equal "
                f"values across frames, got {t.tolist()}"
            )
        dtype = next(self.transformer.parameters()).dtype
        out = self.transformer(x.to(dtype), timestep, context.to(dtype), return_dict=False)[0]
        return out
