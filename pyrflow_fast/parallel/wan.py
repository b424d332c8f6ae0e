"""``ContextParallelWan``: a :class:`~pyrflow_fast.wan.WanDiT` (or PPF) forward with its tokens split over ranks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from ..ppf import PPFWan
from ..wan import WanDiT, attention
from .context import TokenShards, context_attention, global_rank, per_frame_slice
from .plan import ParallelGroups, ParallelPlan

__all__ = ["ContextParallelWan", "blocks_sharded", "load_sharded_wan", "shard_blocks"]


class ContextParallelWan(nn.Module):
    """A :class:`~pyrflow_fast.wan.WanDiT` or :class:`~pyrflow_fast.ppf.PPFWan` run context-parallel per
    :class:`ParallelPlan`: the wrapped model's own call, e.g. ``model(x, t, context, rope=..., full_size=...)``
    or ``ppf(x, t, context, stage=l)``.

    Every rank calls it with the same (replicated) inputs and gets the same full output. The wrapped
    model's own forward runs, with its blocks and head split through
    :meth:`WanDiT.split_tokens <pyrflow_fast.wan.WanDiT.split_tokens>`: a split forward keeps this
    rank's shard of each frame's ``H' W'`` patch tokens (and the matching rows of the RoPE tables),
    runs the blocks on them (modulation, cross-attention and FFN are per token, so they stay local;
    self-attention goes through :func:`~pyrflow_fast.parallel.context.context_attention`), applies the
    head and all-gathers the tokens. A replicated forward runs whole and broadcasts the group's first
    rank's head output, so the latents stay bit-identical across ranks. With ``plan.cfg_parallel`` an
    even batch is split in halves over the two halves of the ranks, which exchange their outputs at the end.
    A PPF stage's forward is planned from its own token count (its latent size is always the full one).

    ``WanBackbone(ContextParallelWan(model, plan, groups))`` runs in every sampler, and a wrapped
    ``PPFWan`` in :func:`~pyrflow_fast.ppf.sample_ppf`. Inference only (under ``torch.no_grad``); not with
    ``compile_blocks`` (the collectives sit inside the blocks' self-attention).

    :param model: the transformer or its PPF model (every rank holds the full weights, or
        :func:`shard_blocks` shards the blocks').
    :param plan: which forwards split, with which method.
    :param groups: from :func:`~pyrflow_fast.parallel.plan.setup` / :func:`~pyrflow_fast.parallel.plan.make_groups`.
    :raises ValueError: for Ulysses on more ranks than the model has heads.
    """

    def __init__(self, model: nn.Module, plan: ParallelPlan, groups: ParallelGroups | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.groups = groups or ParallelGroups()
        if plan.cfg_parallel and self.groups.branch is None:
            raise ValueError("plan.cfg_parallel needs groups from make_groups(cfg_parallel=True)")
        ulysses = plan.method == "ulysses" or any(m == "ulysses" for _, m in plan.stages)
        heads = model.config.num_heads
        for group in (self.groups.world, self.groups.context):
            world = dist.get_world_size(group)
            if ulysses and world > heads:
                raise ValueError(
                    f"Ulysses splits the {heads} heads over the ranks, but a group has {world} ranks; "
                    "use method='ring' (or fewer ranks)"
                )
        self._halves: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (context, version, its half)

    @property
    def _dit(self) -> WanDiT:
        """The WanDiT whose forwards split (a PPFWan's shared one); a property, so not a second submodule."""
        return self.model.model if isinstance(self.model, PPFWan) else self.model

    @property
    def config(self):
        """The wrapped model's :class:`~pyrflow_fast.wan.config.WanConfig`."""
        return self.model.config

    @property
    def num_stages(self) -> int:
        """A wrapped PPFWan's stage count (read by :func:`~pyrflow_fast.ppf.sample_ppf`)."""
        return self.model.num_stages

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor, **options) -> torch.Tensor:
        """The wrapped model's forward with ``options`` (its keyword arguments): the velocity
        ``(B, out_dim, F, H, W)`` of ``x`` ``(B, in_dim, F, H, W)`` at ``t`` (a number, ``(B,)`` or ``(B, F)``),
        the same on every rank."""
        if torch.is_grad_enabled():
            raise RuntimeError("ContextParallelWan is inference-only; call it under torch.no_grad()")
        b = x.shape[0]
        g = self.groups
        if not (self.plan.cfg_parallel and b % 2 == 0):
            return self._forward(x, t, context, options, g.world)
        half = slice(g.batch_half * (b // 2), (g.batch_half + 1) * (b // 2))
        if torch.is_tensor(t) and t.ndim:
            if t.shape[0] != b:
                raise ValueError(f"t has shape {tuple(t.shape)}; expected a number, ({b},) or ({b}, F)")
            t = t[half]
        out = self._forward(x[half], t, self._context_half(context, half), options, g.context)
        parts = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(parts, out.contiguous(), group=g.branch)
        return torch.cat(parts)

    def _context_half(self, context: torch.Tensor, half: slice) -> torch.Tensor:
        """This rank's half of ``context``, the same tensor while ``context`` is (so the text cache hits)."""
        version = -1 if context.is_inference() else context._version
        if self._halves is None or self._halves[0] is not context or self._halves[1] != version:
            self._halves = (context, version, context[half])
        return self._halves[2]

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor, options: dict, group
    ) -> torch.Tensor:
        split = functools.partial(self._split, size=tuple(x.shape[2:]), group=group)
        with self._dit.split_tokens(split):
            return self.model(x, t, context, **options)

    def _split(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        body: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        size: tuple[int, ...],
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        """:meth:`WanDiT.split_tokens`'s ``split``: ``body`` on this rank's shard of ``tokens`` ``(B, F', S, dim)``
        (or on all of them, broadcast, for a replicated forward), gathered to ``(B, F', S, P)``."""
        frames, per_frame = tokens.shape[1:3]
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        method = self.plan.method_for(size, frames * per_frame, per_frame, world)
        if method == "replicate":
            out = body(tokens, cos, sin)
            if world > 1:  # identical on every rank by construction, not by hoping the kernels are deterministic
                dist.broadcast(out, src=global_rank(group, 0), group=group)
            return out
        shards = TokenShards.split(frames, per_frame, world)
        start, count = shards.start(rank), shards.per_rank[rank]
        cos, sin = (per_frame_slice(table, frames, start, count) for table in (cos, sin))
        with attention.self_attention(context_attention(method, shards, group)):
            out = body(tokens[:, :, start : start + count], cos, sin)  # (B, F', S_r, P)
        return _gather_tokens(out, shards, group)


def _gather_tokens(local: torch.Tensor, shards: TokenShards, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather ``(B, F, S_r, P)`` shards into ``(B, F, S, P)`` (padded to the largest shard on the wire)."""
    most = max(shards.per_rank)
    padded = torch.nn.functional.pad(local, (0, 0, 0, most - local.shape[2])).contiguous()
    parts = [torch.empty_like(padded) for _ in shards.per_rank]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:, :, :n] for p, n in zip(parts, shards.per_rank, strict=True)], dim=2)


def shard_blocks(model: WanDiT, *, group: dist.ProcessGroup | None = None, mp_policy=None, lora=None) -> WanDiT:
    """Shard each transformer block's weights over the ranks of ``group`` (default: all) with FSDP2
    ``fully_shard``, in place; the one sharding of inference (:class:`ContextParallelWan`) and training
    (:func:`~pyrflow_fast.train.sharding.sharded_wan`).

    Each rank then stores ``1/N`` of the blocks' weights (over 99% of a Wan2.1's: the 14B's 28.6 GB of bf16
    become 3.6 GB per rank on 8 ranks) and a block's forward all-gathers its weights and frees them after.
    The embeddings and the head stay whole on every rank. Every rank must run the same sequence of
    block forwards, which :class:`ContextParallelWan` does (every rank runs the same sampler);
    ``WanDiT.text_cache`` then caches nothing (it would run the blocks' text projections outside their forward).
    The model may be on the meta device (shard first, then ``to_empty`` and load shard by shard, as
    :func:`load_sharded_wan` does) or already loaded on its device (its whole weights are then freed).

    :param group: the ranks the weights are spread over; the mesh runs on the CPU for a gloo group, else
        on the accelerator.
    :param mp_policy: FSDP2's ``MixedPrecisionPolicy`` (training's bf16 all-gathers,
        :func:`~pyrflow_fast.train.sharding.mp_policy`); default: compute in the weights' dtype.
    :param lora: adapters whose ``block_layers(i)`` (:class:`~pyrflow_fast.train.lora.LoRA`) are sharded in block
        ``i``'s FSDP group (one all-gather per block); such a group of several modules needs an FSDP root above
        it that runs forward first (training's ``shard_root``).
    :returns: ``model``.
    """
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    group = group if group is not None else dist.group.WORLD
    mesh = DeviceMesh.from_group(group, _mesh_device(group))
    for i, block in enumerate(model.blocks):
        modules = [block, *lora.block_layers(i)] if lora is not None else block
        fully_shard(modules, mesh=mesh, reshard_after_forward=True, mp_policy=mp_policy or MixedPrecisionPolicy())
    return model


def _mesh_device(group: dist.ProcessGroup) -> str:
    """The device type of ``group``'s collectives: the CPU for gloo, else the accelerator (CUDA under NCCL)."""
    accelerator = torch.accelerator.current_accelerator()
    if dist.get_backend(group) == "gloo" or accelerator is None:
        return "cpu"
    return accelerator.type


def blocks_sharded(model: WanDiT) -> bool:
    """Whether :func:`shard_blocks` has sharded ``model``'s blocks."""
    from torch.distributed.fsdp import FSDPModule

    return all(isinstance(block, FSDPModule) for block in model.blocks)


@torch.no_grad()
def load_sharded_wan(
    model_dir: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    text_len: int = 512,
    group: dist.ProcessGroup | None = None,
) -> WanDiT:
    """The transformer of the Wan2.1 folder ``model_dir`` (either layout, safetensors weights) with its blocks
    sharded over ``group``, read shard by shard: built on the meta device, sharded (:func:`shard_blocks`),
    allocated on ``device`` and filled with only this rank's rows of each tensor
    (:func:`~pyrflow_fast.train.inputs.load_sharded_weights`). No rank ever holds more than its shards, the
    embeddings and the head plus one tensor slice: the 14B loads on ranks that could not hold it whole.

    :param dtype: of the weights (cast while reading); ``text_len``: for a diffusers config, which does not
        store it (as :func:`~pyrflow_fast.wan.checkpoint.load_wan`).
    :raises CheckpointError: without a ``config.json``; ConfigMismatchError (a ``ValueError``) naming the file
        for missing, unexpected, misshapen or non-finite weights.
    """
    from ..train.inputs import load_sharded_weights
    from ..wan.checkpoint import CheckpointError, read_config

    config = read_config(model_dir, text_len=text_len)
    if config is None:
        raise CheckpointError(f"{model_dir}: no transformer config.json next to the weights")
    with torch.device("meta"):
        model = WanDiT(config).to(dtype)
    shard_blocks(model, group=group)
    model.to_empty(device=device)
    load_sharded_weights(model, model_dir)
    return model.eval().requires_grad_(False)
