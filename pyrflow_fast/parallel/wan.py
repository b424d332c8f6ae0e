"""``ContextParallelWan``: a :class:`~pyrflow_fast.wan.WanDiT` forward with its tokens split over ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from ..wan import attention
from .context import TokenShards, context_attention, global_rank, per_frame_slice
from .plan import ParallelGroups, ParallelPlan

__all__ = ["ContextParallelWan", "shard_blocks"]


class ContextParallelWan(nn.Module):
    """``model(x, t, context, rope=..., full_size=...)`` of a WanDiT, run context-parallel per :class:`ParallelPlan`.

    Every rank calls it with the same (replicated) inputs and gets the same full output. A split
    forward embeds the patches, keeps its shard of each frame's ``H' W'`` tokens (and the matching
    rows of the RoPE tables), runs the model's own blocks on them (modulation, cross-attention and
    FFN are per token, so they stay local; self-attention goes through
    :func:`~pyrflow_fast.parallel.context.context_attention`), applies the head and all-gathers the
    tokens. A replicated forward runs the model and broadcasts the group's first rank's output, so
    the latents stay bit-identical across ranks. With ``plan.cfg_parallel`` an even batch is split
    in halves over the two halves of the ranks, which exchange their outputs at the end.

    It takes :class:`~pyrflow_fast.wan.WanDiT`'s call, so ``WanBackbone(ContextParallelWan(model, plan, groups))``
    runs in every sampler. Inference only (under ``torch.no_grad``); not with ``compile_blocks``
    (the collectives sit inside the blocks' self-attention).

    :param model: the transformer (every rank holds the full weights).
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
        self._sharded = any(isinstance(block, FSDPModule) for block in model.blocks)

    @property
    def config(self):
        """The wrapped model's :class:`~pyrflow_fast.wan.config.WanConfig`."""
        return self.model.config

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        *,
        rope: str = "integer",
        full_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """As :meth:`pyrflow_fast.wan.WanDiT.forward`: the velocity ``(B, out_dim, F, H, W)`` of ``x``
        ``(B, in_dim, F, H, W)`` at ``t`` (a number, ``(B,)`` or ``(B, F)``), the same on every rank."""
        if torch.is_grad_enabled():
            raise RuntimeError("ContextParallelWan is inference-only; call it under torch.no_grad()")
        if self._sharded and getattr(self.model, "_text_cache", None) is not None:
            raise RuntimeError(
                "WanDiT.text_cache() computes the text keys outside the blocks' forward, where FSDP-sharded "
                "block weights (shard_blocks) are not gathered; sample without text_cache()"
            )
        _, t = self.model.check_input(x, t)
        b = x.shape[0]
        g = self.groups
        if not (self.plan.cfg_parallel and b % 2 == 0):
            return self._forward(x, t, context, rope, full_size, g.world)
        half = slice(g.batch_half * (b // 2), (g.batch_half + 1) * (b // 2))
        out = self._forward(x[half], t[half], self._context_half(context, half), rope, full_size, g.context)
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
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        rope: str,
        full_size: Sequence[int] | None,
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        model, cfg = self.model, self.config
        b, _, f, h, w = x.shape
        patch = cfg.patch_size
        grid = (f // patch[0], h // patch[1], w // patch[2])
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        method = self.plan.method_for((f, h, w), grid[0] * grid[1] * grid[2], grid[1] * grid[2], world)
        if method == "replicate":
            out = model(x, t, context, rope=rope, full_size=full_size)
            if world > 1:  # identical on every rank by construction, not by hoping the kernels are deterministic
                dist.broadcast(out, src=global_rank(group, 0), group=group)
            return out

        e, e0 = model.embed_time(t)
        cos, sin = model.rope_tables(grid, rope, full_size, device=x.device, dtype=e.dtype)
        shards = TokenShards.split(grid[0], grid[1] * grid[2], world)
        start, count = shards.start(rank), shards.per_rank[rank]
        local = model.patchify(x)[:, :, start : start + count]  # (B, F', S_r, dim)
        cos, sin = (per_frame_slice(table, grid[0], start, count) for table in (cos, sin))
        with attention.self_attention(context_attention(method, shards, group)):
            local = model.run_blocks(local, context, e0, cos, sin)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = model.head(local, e)  # (B, F', S_r, pt*ph*pw*C) in e's dtype
        return model.unpatchify(_gather_tokens(out, shards, group), (f, h, w), patch)


def _gather_tokens(local: torch.Tensor, shards: TokenShards, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather ``(B, F, S_r, P)`` shards into ``(B, F, S, P)`` (padded to the largest shard on the wire)."""
    most = max(shards.per_rank)
    padded = torch.nn.functional.pad(local, (0, 0, 0, most - local.shape[2])).contiguous()
    parts = [torch.empty_like(padded) for _ in shards.per_rank]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:, :, :n] for p, n in zip(parts, shards.per_rank, strict=True)], dim=2)


def shard_blocks(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Shard each transformer block's weights over the ranks of ``group`` with FSDP2 ``fully_shard``, in place.

    Each rank then stores ``1/N`` of the blocks' weights (over 99% of a Wan2.1's: the 14B's 28.6 GB of bf16
    become 3.6 GB per rank on 8 ranks) and a block's forward all-gathers its weights and frees them after.
    The embeddings and the head stay whole on every rank. Every rank must run the same sequence of
    block forwards, which :class:`ContextParallelWan` does (every rank runs the same sampler), and
    ``WanDiT.text_cache`` cannot be used (it runs the blocks' text projections outside their forward).
    Call it after the weights are loaded and moved to the device. Returns ``model``.
    """
    from torch.distributed.device_mesh import DeviceMesh

    device = next(model.parameters()).device.type
    mesh = DeviceMesh.from_group(group if group is not None else dist.group.WORLD, device)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    return model
