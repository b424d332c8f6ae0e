"""The per-stage context-parallel plan, the process groups it runs on, and :func:`setup` under ``torchrun``.

Every rank runs the same sampler on the same replicated latent with the same noise; only the
transformer forward is spread over the ranks (:class:`~pyrflow_fast.parallel.wan.ContextParallelWan`).
So a stage transition, the guidance combine and the Euler update need no communication, and the
latents stay bit-identical on every rank (each forward's output is all-gathered or broadcast).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .context import METHODS

__all__ = [
    "DEFAULT_MIN_TOKENS", "ParallelGroups", "ParallelPlan", "join", "leave", "make_groups", "setup", "shared_seed",
]  # fmt: skip

DEFAULT_MIN_TOKENS = 2048
"""Forwards with fewer video tokens per sample run replicated by default.

At pyrflow's default 81 x 448 x 832 the stages have 30,576, 4,004 and 546 tokens: the two finer ones
split, the coarsest replicates. An estimate, to be replaced by a measurement: every stage sends few
bytes per FLOP (``benchmarks/bench_parallel.py``), but at peak bf16 throughput a 546-token layer of
the 1.3B is about 12 us of matmuls per rank on 8 H200s, comparable to the two all-to-alls it would add.
"""


@dataclass(frozen=True)
class ParallelPlan:
    """How each transformer forward is spread over the ranks.

    :param method: ``"ulysses"`` or ``"ring"`` (:mod:`pyrflow_fast.parallel.context`) for the stages that split.
    :param min_tokens: forwards with fewer video tokens per sample replicate (every rank computes all of it).
    :param cfg_parallel: split each even batch in two halves computed by two halves of the ranks (the
        batched cond/uncond pair of :func:`pyrflow_fast.samplers.guided`); each half context-parallel
        within its ranks. Needs an even number of ranks; an odd batch runs on all ranks.
    :param stages: explicit choices ``((F, H, W), method)`` per latent size, a method or ``"replicate"``,
        overriding ``min_tokens`` for that stage.
    """

    method: str = "ulysses"
    min_tokens: int = DEFAULT_MIN_TOKENS
    cfg_parallel: bool = False
    stages: tuple[tuple[tuple[int, int, int], str], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ParallelPlan.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.min_tokens < 0:
            raise ValueError(f"ParallelPlan.min_tokens must be >= 0, got {self.min_tokens}")
        object.__setattr__(self, "stages", tuple((tuple(int(n) for n in size), m) for size, m in self.stages))
        for size, method in self.stages:
            if len(size) != 3 or method not in (*METHODS, "replicate"):
                raise ValueError(
                    f"ParallelPlan.stages entries are ((F, H, W), method) with method in "
                    f"{', '.join((*METHODS, 'replicate'))}; got ({size}, {method!r})"
                )

    def method_for(self, size: Sequence[int], tokens: int, per_frame: int, world: int) -> str:
        """``"ulysses"``, ``"ring"`` or ``"replicate"`` for a forward on latents of ``size`` ``(F, H, W)``.

        :param tokens: video tokens per sample; ``per_frame``: tokens per frame; ``world``: ranks splitting it.
            A single rank, or fewer tokens per frame than ranks (a rank would hold none), replicates.
        """
        if world == 1 or per_frame < world:
            return "replicate"
        explicit = dict(self.stages).get(tuple(int(n) for n in size))
        if explicit is not None:
            return explicit
        return self.method if tokens >= self.min_tokens else "replicate"


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups of a :class:`ParallelPlan` (``None``: the default group).

    :param world: every rank.
    :param context: the ranks that split one forward's tokens: every rank, or with ``cfg_parallel``
        this rank's half (``[0, N/2)`` or ``[N/2, N)``).
    :param branch: with ``cfg_parallel``, this rank and its partner in the other half ``{r, r +- N/2}``,
        which exchange their batch halves; ``None`` otherwise.
    :param batch_half: the half of an even batch this rank computes with ``cfg_parallel`` (0 or 1).
    """

    world: dist.ProcessGroup | None = None
    context: dist.ProcessGroup | None = None
    branch: dist.ProcessGroup | None = None
    batch_half: int = 0


def make_groups(cfg_parallel: bool) -> ParallelGroups:
    """The :class:`ParallelGroups` of this rank (collective: every rank of the default group calls it)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if not cfg_parallel:
        return ParallelGroups()
    if world % 2:
        raise ValueError(f"cfg_parallel needs an even number of ranks, got {world}")
    half = world // 2
    groups = {}
    for start in (0, half):  # every rank creates every group, in the same order
        groups[start] = dist.new_group(list(range(start, start + half)))
    pairs = {r: dist.new_group([r, r + half]) for r in range(half)}
    return ParallelGroups(
        world=None, context=groups[0 if rank < half else half], branch=pairs[rank % half], batch_half=int(rank >= half)
    )


def setup(
    method: str = "ulysses",
    cfg_parallel: bool = False,
    *,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    backend: str | None = None,
) -> tuple[ParallelPlan, ParallelGroups]:
    """Join the ``torchrun`` process group (if not joined yet) and build the plan and its groups.

    :param method: ``"ulysses"`` or ``"ring"`` for the split stages.
    :param cfg_parallel: run the two CFG branches on different halves of the ranks.
    :param min_tokens: the plan's replicate threshold (:data:`DEFAULT_MIN_TOKENS`).
    :param backend: process-group backend (default: ``nccl`` with CUDA, else ``gloo``); with NCCL each
        rank uses the GPU ``LOCAL_RANK``.
    :returns: ``(plan, groups)`` for :class:`~pyrflow_fast.parallel.wan.ContextParallelWan`.
    """
    plan = ParallelPlan(method=method, min_tokens=min_tokens, cfg_parallel=cfg_parallel)
    join(backend)
    return plan, make_groups(cfg_parallel)


def join(backend: str | None = None) -> None:
    """Join the ``torchrun`` process group unless joined: ``backend`` as in :func:`setup`.

    :raises RuntimeError: outside ``torchrun`` (``RANK`` unset).
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        raise RuntimeError("context parallelism runs under torchrun (RANK, WORLD_SIZE, MASTER_ADDR unset)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)


def leave(wait: bool = True) -> None:
    """Tear down the process group if joined: after a last barrier with ``wait``, so no rank's backend threads
    are still busy with another's collectives (gloo aborts a process that exits with them: "terminate called
    without an active exception"); without it after an error, when the other ranks may be gone or stuck and
    waiting for them would only hang."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def shared_seed(seed: int | None, device: torch.device | str = "cpu") -> int:
    """Rank 0's ``seed`` on every rank (a random one when ``None``): every rank must draw the same noise.

    :param device: where the broadcast tensor lives (``cuda`` under NCCL).
    """
    value = torch.tensor([int(torch.randint(2**62, ()) if seed is None else seed)], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())
