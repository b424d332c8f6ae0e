"""Multi-GPU generation: context-parallel self-attention with a per-stage plan.

Under ``torchrun`` every rank runs the same sampler on the same replicated latent; the transformer
forward of the stages the :class:`ParallelPlan` splits shards its tokens over the ranks (Ulysses or
ring attention, :mod:`pyrflow_fast.parallel.context`), the others run replicated::

    plan, groups = setup("ulysses", cfg_parallel=False)
    backbone = WanBackbone(ContextParallelWan(model, plan, groups))

See ``docs/multi_gpu_generation.md``.
"""

from .context import METHODS, TokenShards, attend_lse, context_attention, ring_attention, shard_sizes, ulysses_attention
from .plan import DEFAULT_MIN_TOKENS, ParallelGroups, ParallelPlan, join, leave, make_groups, setup, shared_seed
from .wan import ContextParallelWan, blocks_sharded, load_sharded_wan, shard_blocks

__all__ = [
    "DEFAULT_MIN_TOKENS",
    "METHODS",
    "ContextParallelWan",
    "ParallelGroups",
    "ParallelPlan",
    "TokenShards",
    "attend_lse",
    "blocks_sharded",
    "context_attention",
    "join",
    "leave",
    "load_sharded_wan",
    "make_groups",
    "ring_attention",
    "setup",
    "shard_blocks",
    "shard_sizes",
    "shared_seed",
    "ulysses_attention",
]
