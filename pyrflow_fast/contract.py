"""The model contracts used by all pyramid code, and the adapters between them.

Two signatures, both in float32 and on natural-scale latents (the pyramid divides its stage sample
by ``c = g (1 - sigma) + sigma`` before calling, theory §3.1):

- a :class:`Backbone` is what a network computes: ``backbone(x, t, context, full_size=None) -> v_hat``;
- a :class:`Denoiser` is what the samplers (:mod:`pyrflow_fast.samplers`), the losses and the
  distillation call: ``model(x_nat, t, cond) -> v_hat``, the condition opaque to the caller.

The arguments:

- a natural-scale latent ``x`` / ``x_nat`` of shape ``(B, C, F, H, W)``,
- per-frame timesteps ``t`` of shape ``(B, F)`` with ``t = 1000 * varsigma`` (a backbone also
  takes a ``(B,)`` tensor or a number, broadcast to every frame),
- text embeddings ``context`` (for a denoiser: ``cond``) of shape ``(B, L, text_dim)``,

and the result, the predicted natural velocity ``v_hat`` of shape ``(B, C, F, H, W)`` in float32.
``full_size``, the full-resolution latent size ``(F, H, W)``, is what backbones with
full-resolution-scaled RoPE positions need at coarse stages.

Backbones: :class:`WanBackbone` wraps :class:`pyrflow_fast.wan.WanDiT`; :class:`DiffusersWanBackbone`
wraps a diffusers ``WanTransformer3DModel`` instance so that it can be plugged in directly.

Denoisers: :class:`BackboneDenoiser` turns a backbone into a denoiser (``full_size`` bound, an
optional per-stage adapter selection for per-stage LoRA); :class:`FrozenDenoiser` runs any model in
``torch.inference_mode`` (a frozen teacher or real score); :class:`PPFDenoiser` runs a
pyramidal-patchification model (:class:`pyrflow_fast.ppf.PPFWan`) at the stage of each sample's
noise level.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pyrflow_ref.windows import StageWindows

__all__ = [
    "Backbone",
    "BackboneDenoiser",
    "Denoiser",
    "DiffusersWanBackbone",
    "FrozenDenoiser",
    "PPFDenoiser",
    "WanBackbone",
    "check_ppf_windows",
    "frame_timesteps",
]


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


# ------------------------------------------------------------------------------- denoisers
def backbone_for(transformer: nn.Module, rope: str = "integer", text_len: int | None = 512) -> Backbone:
    """The :class:`Backbone` over a transformer object: :class:`DiffusersWanBackbone` for a diffusers
    ``WanTransformer3DModel``, :class:`WanBackbone` for pyrflow's :class:`~pyrflow_fast.wan.WanDiT` (or a
    module with its call, e.g. :class:`~pyrflow_fast.parallel.ContextParallelWan`).

    :param rope: RoPE positions at coarse stages; diffusers' model has only Wan's ``integer`` ones.
    :param text_len: contexts are padded to this many tokens for the diffusers model.
    """
    if type(transformer).__name__ == "WanTransformer3DModel":
        if rope != "integer":
            raise ValueError(
                f"diffusers' WanTransformer3DModel has only Wan's integer RoPE positions, this checkpoint uses "
                f"{rope!r}: load it as pyrflow's WanDiT (pyrflow_fast.wan.checkpoint.load_wan)"
            )
        return DiffusersWanBackbone(transformer, text_len=text_len)
    return WanBackbone(transformer, rope=rope)


class Denoiser(Protocol):
    """Interface of the samplers' model: ``model(x_nat, t, cond) -> v_hat``.

    :param x_nat: natural-scale latent ``(B, C, F, H, W)`` (the stage sample divided by ``c``).
    :param t: per-frame timesteps ``1000 * varsigma``, ``(B, F)``, on ``x_nat``'s device.
    :param cond: the condition, passed through untouched (text embeddings ``(B, L, text_dim)`` for
        the Wan adapters; ``None`` or anything else for other models).
    :returns: the natural velocity ``v_hat`` ``(B, C, F, H, W)``, float32.
    """

    def __call__(self, x_nat: torch.Tensor, t: torch.Tensor, cond: Any, /) -> torch.Tensor: ...


class BackboneDenoiser(nn.Module):
    """A :class:`Backbone` as a :class:`Denoiser`: ``model(x_nat, t, cond) = backbone(x_nat, t, cond, full_size)``.

    ``forward(x_nat, t, cond, full_size=None, stage=0)`` also serves the trainer's loss, which
    passes the full-resolution size and the stage of each group: a ``full_size`` given to the call
    overrides the bound one, and ``stage`` selects the adapter set of ``lora`` before the backbone
    runs. The backbone and ``lora`` are submodules (state-dict keys ``backbone.*`` and ``lora.*``),
    so the adapter trains, wraps (DDP, FSDP) and checkpoints as one module.

    :param backbone: a :class:`Backbone` ``(B, C, F, H, W)`` -> ``(B, C_out, F, H, W)``, or a compiled one.
    :param full_size: the full-resolution latent size ``(F, H, W)`` passed to every call (``None``:
        the backbone's default, the input size).
    :param lora: per-stage adapters: any module with ``select(stage)`` (e.g.
        :class:`pyrflow_fast.train.lora.LoRA`), called with ``stage`` before each evaluation.
    """

    def __init__(
        self, backbone: nn.Module, full_size: Sequence[int] | None = None, lora: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.full_size = tuple(int(n) for n in full_size) if full_size is not None else None
        self.lora = lora

    def forward(
        self,
        x_nat: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        full_size: Sequence[int] | None = None,
        stage: int = 0,
    ) -> torch.Tensor:
        """``v_hat`` ``(B, C_out, F, H, W)`` (float32) of ``x_nat`` ``(B, C, F, H, W)`` at ``t`` ``(B, F)``."""
        if self.lora is not None:
            self.lora.select(stage)
        return self.backbone(x_nat, t, cond, full_size=self.full_size if full_size is None else full_size)


class FrozenDenoiser:
    """Run ``fn`` in ``torch.inference_mode`` and return an ordinary tensor (a clone).

    For frozen models (a teacher, DMD's real score): no autograd records, no saved activations,
    and the result may enter autograd-recorded computation. Calls pass through unchanged, so it
    wraps a :class:`Denoiser` (``(B, C, F, H, W)`` in and out) or any tensor-valued callable.

    :param fn: the frozen model (kept as ``fn``).
    """

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            out = self.fn(*args, **kwargs)
        return out.clone()


def check_ppf_windows(ppf: nn.Module, windows: StageWindows) -> None:
    """ValueError unless ``windows`` has one window per stage of the PPF model ``ppf`` (``ppf.num_stages``).

    Every PPF sampler and adapter calls it first: a schedule indexes the stages by window, so a
    mismatch would otherwise surface as an index error deep in sampling, or not at all.
    """
    if windows.num_stages != ppf.num_stages:
        raise ValueError(f"{windows.num_stages} windows for {ppf.num_stages} PPF stages")


class PPFDenoiser:
    """A pyramidal-patchification model as a :class:`Denoiser`, with the stage chosen from the timestep.

    ``ppf(x, t, context, stage=l)`` (a :class:`pyrflow_fast.ppf.PPFWan`, or any module with
    ``num_stages`` and that call) maps a full-resolution latent ``(B, C, F, H, W)`` to its velocity
    at stage ``l``. Each sample runs at the stage whose window holds its noise level ``t / 1000``
    (PPF uses the plain process at gain 1, so ``t`` must be equal over frames; a window boundary
    belongs to the finer stage, as in :meth:`~pyrflow_ref.windows.StageWindows.stage_of`). Samples
    of one stage run as one batch.

    :param ppf: the model.
    :param windows: one window per stage (finest first).
    """

    def __init__(self, ppf: nn.Module, windows: StageWindows) -> None:
        check_ppf_windows(ppf, windows)
        self.ppf = ppf
        self.windows = windows

    def stages(self, t: torch.Tensor | float, batch: int, frames: int) -> list[int]:
        """Stage of each sample from its timesteps (a number, ``(B,)`` or ``(B, F)``)."""
        t = frame_timesteps(t, batch, frames, None)
        if not bool((t == t[:, :1]).all()):
            raise ValueError("PPF stages need one timestep per sample (equal over frames)")
        return [self.windows.stage_of(min(max(float(v) / 1000.0, 0.0), 1.0)) for v in t[:, 0].tolist()]

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor) -> torch.Tensor:
        """``v_hat`` ``(B, C_out, F, H, W)`` (float32) of ``x`` ``(B, C, F, H, W)``, each sample at its stage."""
        b, f = x.shape[0], x.shape[2]
        stages = self.stages(t, b, f)
        t = frame_timesteps(t, b, f, x.device)
        out = None
        for stage in sorted(set(stages)):
            idx = torch.tensor([i for i, s in enumerate(stages) if s == stage], device=x.device)
            v = self.ppf(x[idx], t[idx], context[idx], stage=stage)
            if out is None:
                out = v.new_empty((b,) + tuple(v.shape[1:]))
            out[idx] = v
        return out
