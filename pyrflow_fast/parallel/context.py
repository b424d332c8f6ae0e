"""Context-parallel self-attention over ``torch.distributed``: Ulysses (all-to-all over heads) and ring.

Every rank holds a contiguous shard of each frame's ``S = H' W'`` tokens (:func:`shard_sizes`: the
first ``S mod N`` ranks hold one token more), so a rank's ``L_r = F * S_r`` tokens are ordered
``(f, s)`` like the model's. Shards are uneven rather than padded: nothing is masked, so the
unmasked fast kernels of :func:`pyrflow_fast.wan.attention.attend` keep running.

- :func:`ulysses_attention`: one all-to-all turns ``(B, L_r, H, D)`` q/k/v into ``(B, L, H_r, D)``
  (all tokens, a group of heads), :func:`~pyrflow_fast.wan.attention.attend` runs locally with the
  selected backend, and a second all-to-all returns ``(B, L_r, H, D)``. Heads are split unevenly too
  (:func:`shard_sizes` of ``H``; 12 heads on 8 ranks: ``2,2,2,2,1,1,1,1``), which runs the same
  per-rank maximum as padding to 16 heads without computing padded heads; it needs ``N <= H``
  (use ring attention above that).
- :func:`ring_attention`: k/v shards travel around the ring (``batch_isend_irecv``, the next shard
  in flight while the current one is attended); partial results are merged exactly with their
  log-sum-exp. Any ``N`` and head count.

Both are inference-only (the collectives carry no gradient) and return ``q``'s dtype; the ring's
merge runs in at least float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..wan import attention

__all__ = [
    "METHODS",
    "TokenShards",
    "attend_lse",
    "context_attention",
    "per_frame_slice",
    "ring_attention",
    "shard_sizes",
    "ulysses_attention",
]

METHODS: tuple[str, ...] = ("ulysses", "ring")
"""The context-parallel attention methods."""


def shard_sizes(n: int, world: int) -> list[int]:
    """Split ``n`` items over ``world`` ranks as evenly as possible, the larger shards first.

    >>> shard_sizes(12, 8)
    [2, 2, 2, 2, 1, 1, 1, 1]
    """
    if world < 1 or n < 0:
        raise ValueError(f"cannot split {n} items over {world} ranks")
    base, extra = divmod(n, world)
    return [base + (r < extra) for r in range(world)]


@dataclass(frozen=True)
class TokenShards:
    """Which tokens each rank holds: ``frames`` frames of ``per_rank[r]`` tokens on rank ``r``.

    Rank ``r`` holds tokens ``[start(r), start(r) + per_rank[r])`` of every frame (:func:`shard_sizes`
    of the frame's ``S`` tokens), flattened ``(f, s)``: ``frames * per_rank[r]`` tokens.
    """

    frames: int
    per_rank: tuple[int, ...]

    @classmethod
    def split(cls, frames: int, per_frame: int, world: int) -> TokenShards:
        return cls(frames, tuple(shard_sizes(per_frame, world)))

    def start(self, rank: int) -> int:
        """First token (within a frame) of ``rank``'s shard."""
        return sum(self.per_rank[:rank])

    def length(self, rank: int) -> int:
        """Tokens ``rank`` holds: ``frames * per_rank[rank]``."""
        return self.frames * self.per_rank[rank]


def _group_info(group: dist.ProcessGroup | None) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def global_rank(group: dist.ProcessGroup | None, rank: int) -> int:
    """The default group's rank of ``group``'s rank ``rank`` (``None``: the default group itself)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _check(q: torch.Tensor, shards: TokenShards, world: int, rank: int) -> None:
    if len(shards.per_rank) != world:
        raise ValueError(f"token shards for {len(shards.per_rank)} ranks, the group has {world}")
    if q.shape[1] != shards.length(rank):
        raise ValueError(f"rank {rank} holds {q.shape[1]} tokens, its shard has {shards.length(rank)}")
    if torch.is_grad_enabled() and q.requires_grad:
        raise RuntimeError("context-parallel attention is inference-only; run it under torch.no_grad()")


# ----------------------------------------------------------------------------- Ulysses
def ulysses_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shards: TokenShards, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Attention of this rank's queries to every rank's keys, by all-to-all over heads.

    :param q: this rank's queries ``(B, L_r, H, D)`` (``L_r = shards.length(rank)``); ``k``, ``v`` likewise.
    :param shards: the token layout over the ranks of ``group``.
    :returns: ``(B, L_r, H, D)``, equal to the rows of full attention that this rank holds.
    :raises ValueError: when the group has more ranks than heads (use :func:`ring_attention`).
    """
    world, rank = _group_info(group)
    _check(q, shards, world, rank)
    b, length, h, d = q.shape
    heads = shard_sizes(h, world)
    if heads[-1] == 0:
        raise ValueError(f"Ulysses needs at least one head per rank: {h} heads over {world} ranks; use ring attention")
    mine, frames = heads[rank], shards.frames
    # send: (H, 3, B, L_r, D) split by destination along the heads; recv from rank i: (H_r, 3, B, F, S_i, D)
    send = torch.stack([q, k, v]).permute(3, 0, 1, 2, 4).contiguous()
    recv_sizes = [mine * 3 * b * frames * s * d for s in shards.per_rank]
    recv = q.new_empty(sum(recv_sizes))
    dist.all_to_all_single(recv, send.view(-1), recv_sizes, [n * 3 * b * length * d for n in heads], group=group)
    parts = [p.view(mine, 3, b, frames, s, d) for p, s in zip(recv.split(recv_sizes), shards.per_rank, strict=True)]
    full = torch.cat(parts, dim=4).flatten(3, 4)  # (H_r, 3, B, L, D), tokens in the model's (f, s) order
    qf, kf, vf = full.permute(1, 2, 3, 0, 4).unbind(0)  # (B, L, H_r, D) each
    out = attention.attend(qf, kf, vf)  # (B, L, H_r, D)

    # back: to rank i its tokens of my heads (H_r, B, F, S_i, D); from rank j my tokens of its heads
    chunks = out.permute(2, 0, 1, 3).unflatten(2, (frames, -1)).split(list(shards.per_rank), dim=3)
    send = torch.cat([c.reshape(-1) for c in chunks])
    recv_sizes = [n * b * length * d for n in heads]
    recv = out.new_empty(sum(recv_sizes))
    dist.all_to_all_single(recv, send, recv_sizes, [c.numel() for c in chunks], group=group)
    return recv.view(h, b, length, d).permute(1, 2, 0, 3)


# -------------------------------------------------------------------------------- ring
def attend_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (scale ``D ** -0.5``, no mask) and its log-sum-exp, in ``(B, H, L, D)`` layout.

    :param q: ``(B, H, Lq, D)``; ``k``, ``v``: ``(B, H, Lk, D)``.
    :returns: ``out`` ``(B, H, Lq, D)`` in ``q``'s dtype and ``lse`` ``(B, H, Lq)`` (float32 or float64):
        the log of each query's softmax denominator, what :func:`ring_attention` merges with.
    """
    if q.device.type == "cuda" and q.dtype != torch.float64:
        # the memory-efficient kernel returns the log-sum-exp (some releases pad it to a multiple of 32)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse[..., : q.shape[2]]
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    return _attend_lse_math(q, k, v)


def _attend_lse_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attend_lse` as plain matmuls in at least float32 (devices without a kernel that returns it)."""
    hi = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(hi) @ k.to(hi).transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.exp(scores - lse[..., None]) @ v.to(hi)).to(q.dtype), lse


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shards: TokenShards, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Attention of this rank's queries to every rank's keys, passing k/v around the ring.

    Step ``i`` attends to the shard of rank ``rank - i`` while that of rank ``rank - i - 1`` arrives;
    the partial outputs are merged with their log-sum-exp (exact: ``out = sum_i exp(lse_i - lse) out_i``).

    :param q: this rank's queries ``(B, L_r, H, D)``; ``k``, ``v`` likewise.
    :param shards: the token layout over the ranks of ``group``.
    :returns: ``(B, L_r, H, D)`` in ``q``'s dtype.
    """
    world, rank = _group_info(group)
    _check(q, shards, world, rank)
    b, _, h, d = q.shape
    qh = q.transpose(1, 2)
    hi = torch.promote_types(q.dtype, torch.float32)
    nxt, prev = global_rank(group, (rank + 1) % world), global_rank(group, (rank - 1) % world)
    buf = torch.cat([k.reshape(-1), v.reshape(-1)])  # this rank's k/v, (2, B, L_r, H, D) flattened
    out = lse = None
    for step in range(world):
        src = (rank - step) % world
        pending = []
        if step + 1 < world:
            incoming = buf.new_empty(2 * b * shards.length((src - 1) % world) * h * d)
            ops = [dist.P2POp(dist.isend, buf, nxt, group), dist.P2POp(dist.irecv, incoming, prev, group)]
            pending = dist.batch_isend_irecv(ops)  # one group call: NCCL needs the pair posted together
        kb, vb = buf.view(2, b, shards.length(src), h, d).transpose(2, 3).unbind(0)
        part, part_lse = attend_lse(qh, kb, vb)
        part = part.to(hi)
        if out is None:
            out, lse = part, part_lse
        else:
            new = torch.logaddexp(lse, part_lse)
            out = out * torch.exp(lse - new)[..., None] + part * torch.exp(part_lse - new)[..., None]
            lse = new
        for work in pending:
            work.wait()
        if pending:
            buf = incoming
    return out.to(q.dtype).transpose(1, 2)


def context_attention(method: str, shards: TokenShards, group: dist.ProcessGroup | None = None):
    """The self-attention function ``fn(q, k, v)`` of one sharded forward, for
    :func:`pyrflow_fast.wan.attention.self_attention`."""
    if method not in METHODS:
        raise ValueError(f"unknown context-parallel method {method!r}; known: {', '.join(METHODS)}")
    fn = ulysses_attention if method == "ulysses" else ring_attention

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fn(q, k, v, shards, group)

    return attend


def per_frame_slice(table: torch.Tensor, frames: int, start: int, count: int) -> torch.Tensor:
    """Rows ``[start, start + count)`` of every frame of a per-token table ``(F*S, ...)``: ``(F*count, ...)``.

    How the RoPE cos/sin tables follow the tokens of a shard.
    """
    return table.unflatten(0, (frames, -1))[:, start : start + count].flatten(0, 1)
