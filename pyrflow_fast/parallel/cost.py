"""What one context-parallel forward costs each rank: bytes sent and matrix-product FLOPs (analytic).

Bytes are what a rank hands to the collectives of one :class:`~pyrflow_fast.parallel.wan.ContextParallelWan`
forward, counted as the test counts them on gloo: an ``all_to_all_single`` its input minus its own split,
a ``batch_isend_irecv`` its sends, an ``all_gather`` its input once per other rank, a ``broadcast`` (replicated
stages) the output once per other rank from the source. Per layer:

- Ulysses: ``3 B L_r d (H - H_r)`` elements of q/k/v out, ``H_r B d F (S - S_r)`` of attention back;
- ring: ``2 B H d F (S - S_next)`` elements of k/v (every shard but the next rank's passes through);

then the all-gather of the head's float32 output. FLOPs follow :func:`pyrflow_fast.flops.forward_flops`
(what ``FlopCounterMode`` counts): the per-token items scale with the rank's tokens, self-attention
scores/values with its heads (Ulysses) or its query rows (ring); patch, text and time embeddings stay
replicated. Both are the largest over the ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..flops import forward_flops
from ..wan.config import WanConfig, get_config
from .context import shard_sizes

__all__ = ["ForwardCost", "forward_cost"]

_REPLICATED = ("patch_embedding", "text_embedding", "time_embedding", "cross_attn.text_kv")
_ATTENTION = ("self_attn.scores", "self_attn.values")


@dataclass(frozen=True)
class ForwardCost:
    """One forward on the busiest rank.

    :param method: ``ulysses``, ``ring`` or ``replicate``.
    :param tokens: video tokens per sample.
    :param flops: matrix-product FLOPs this rank computes.
    :param full_flops: those of the whole forward on one device.
    :param bytes_sent: bytes this rank sends.
    """

    method: str
    tokens: int
    flops: int
    full_flops: int
    bytes_sent: int


def forward_cost(
    config: WanConfig | str,
    size: Sequence[int],
    world: int,
    method: str,
    *,
    batch: int = 1,
    activation_bytes: int = 2,
    output_bytes: int = 4,
) -> ForwardCost:
    """Bytes and FLOPs of the busiest rank for one forward on latents ``size`` ``(F, H, W)``.

    :param world: ranks splitting the forward.
    :param method: ``ulysses``, ``ring`` or ``replicate``.
    :param activation_bytes: bytes per q/k/v element (2 for bf16, 4 for float32).
    :param output_bytes: bytes per element of the head's output (float32: 4).
    """
    cfg = get_config(config)
    full = forward_flops(cfg, size, batch=batch)
    pt, ph, pw = cfg.patch_size
    frames, per_frame = size[0] // pt, (size[1] // ph) * (size[2] // pw)
    tokens, b, d, h = frames * per_frame, batch, cfg.head_dim, cfg.num_heads
    out_elements = b * tokens * cfg.patch_volume * cfg.out_dim
    if method == "replicate" or world == 1:
        return ForwardCost("replicate", tokens, full.total, full.total, (world - 1) * out_elements * output_bytes)
    if method not in ("ulysses", "ring"):
        raise ValueError(f"method must be ulysses, ring or replicate, got {method!r}")
    shards, heads = shard_sizes(per_frame, world), shard_sizes(h, world)
    gather = (world - 1) * b * frames * max(shards) * cfg.patch_volume * cfg.out_dim * output_bytes
    most_flops = most_bytes = 0
    for r in range(world):
        flops = 0
        for name, value in full.items.items():
            if name in _REPLICATED:
                flops += value
            elif name in _ATTENTION and method == "ulysses":  # all queries, this rank's heads
                flops += value * heads[r] // h
            else:  # this rank's tokens (ring attention: its query rows against every key)
                flops += value * shards[r] // per_frame
        if method == "ulysses":
            per_layer = 3 * b * frames * shards[r] * d * (h - heads[r]) + heads[r] * b * d * frames * (
                per_frame - shards[r]
            )
        else:
            per_layer = 2 * b * h * d * frames * (per_frame - shards[(r + 1) % world])
        most_flops = max(most_flops, flops)
        most_bytes = max(most_bytes, cfg.num_layers * per_layer * activation_bytes + gather)
    return ForwardCost(method, tokens, most_flops, full.total, most_bytes)
