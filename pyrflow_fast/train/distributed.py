"""The process group and device of a run (``train.parallel``: ``none``, ``ddp``, ``fsdp``; gloo or nccl).

:class:`Distributed` starts the process group torchrun describes (nccl on CUDA, gloo on CPU),
picks the device and offers the few collectives the methods need: barriers, broadcasting a
module from rank 0, averaging gradients of replicated parameters by hand, and the global
gradient norm of parameters that may mix FSDP2 shards (DTensors) with replicated tensors.

Every collective waits at most ``train.collective_timeout`` seconds (the process group's timeout):
on gloo the waiting rank then raises, and :func:`collective_timeout_message` turns that error into
one that names the field, so a stalled or dead peer ends the run instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..parallel.plan import leave

__all__ = [
    "Distributed",
    "clip_grad_norm",
    "collective_timeout_message",
    "full_state",
    "full_tensor",
    "sync_gradients",
]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU copy of ``t`` (gathers a sharded DTensor: a collective under FSDP)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def full_state(named: Iterable[tuple[str, torch.Tensor]], keep: bool) -> dict[str, torch.Tensor]:
    """``{name: full_tensor(t)}`` of ``named`` where ``keep`` (the rank that writes them), else ``{}``.

    Every rank calls it with the same names (each sharded tensor is a collective); the ranks that do not
    keep the copies drop each one as it is gathered, so they never hold more than one whole tensor
    (gathering everywhere would put a whole model on every rank at export)."""
    out = {}
    for name, t in named:
        full = full_tensor(t)
        if keep:
            out[name] = full
    return out


class Distributed:
    """Rank, world size and device of this process; creates the process group for ``ddp`` / ``fsdp``.

    :param parallel: ``"none"``, ``"ddp"`` or ``"fsdp"``.
    :param device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``"cpu"`` or ``"cuda"``.
    :param timeout: seconds any collective may wait for the other ranks (``train.collective_timeout``).
    """

    def __init__(self, parallel: str, device: str, timeout: float = 600.0) -> None:
        self.parallel = parallel
        self.timeout = timeout
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if parallel == "none":
            if world > 1:
                raise ValueError(
                    f"train.parallel = 'none' but WORLD_SIZE = {world}; set train.parallel = 'ddp' or 'fsdp'"
                )
            self.rank, self.world, self.local_rank = 0, 1, 0
        else:
            if not dist.is_initialized():
                dist.init_process_group(
                    backend="nccl" if torch.cuda.is_available() and device != "cpu" else "gloo",
                    timeout=datetime.timedelta(seconds=timeout),
                )
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            self.device = torch.device("cpu")
        elif not torch.cuda.is_available():
            raise ValueError("train.device = 'cuda' but CUDA is not available")
        else:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)

    @property
    def fsdp(self) -> bool:
        return self.parallel == "fsdp"

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, module: nn.Module) -> None:
        """Make every rank hold rank 0's parameters and buffers of ``module``."""
        if self.world > 1:
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, src=0)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce the gradients of replicated parameters (a missing gradient counts as zero); FSDP
        shards are skipped, their gradients are reduce-scattered (averaged) in the backward pass."""
        if self.world > 1:
            for p in params:
                if hasattr(p, "device_mesh"):
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        """Tear down the process group (after a last barrier)."""
        if self.parallel != "none":
            leave(wait=True)

    def abort(self) -> None:
        """Tear down the process group without the last barrier (see :func:`~pyrflow_fast.parallel.plan.leave`)."""
        if self.parallel != "none":
            leave(wait=False)


def collective_timeout_message(err: BaseException, timeout: float) -> str | None:
    """The message for ``err`` when it is a timed-out collective (gloo: ``Timed out waiting ...ms``; NCCL's
    watchdog: ``... timeout``) under ``train.collective_timeout = timeout``, else ``None``."""
    if not isinstance(err, RuntimeError) or "timed out" not in str(err).lower() and "timeout" not in str(err).lower():
        return None
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return (
        f"rank {rank}: a collective did not complete within train.collective_timeout = {timeout:g} s: another rank "
        f"stalled or died (see its log), or one step takes longer than that (raise train.collective_timeout). "
        f"Backend error: {str(err).strip().splitlines()[0]}"
    )


def sync_gradients(wrapped: nn.Module, parallel: str, sync: bool):
    """A context for one backward pass: gradients are synchronised only when ``sync`` (DDP ``no_sync``,
    FSDP2 ``set_requires_gradient_sync``), so accumulation communicates once per step."""
    if parallel == "ddp" and not sync:
        return wrapped.no_sync()
    if parallel == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm of ``params`` to ``max_norm`` (0: no clipping) and return the norm.

    All plain tensors or all DTensors: :func:`torch.nn.utils.clip_grad_norm_`. FSDP2 shards mixed with
    replicated tensors (LoRA adapters, PPF's per-stage layers) cannot share one norm kernel: the
    shards' squares are summed over the ranks, the replicated ones counted once.
    """
    sharded = [hasattr(p, "device_mesh") for p in params]
    if all(sharded) or not any(sharded):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    replicated = torch.zeros((), dtype=torch.float64)
    local = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        if hasattr(p.grad, "to_local"):
            local += p.grad.to_local().double().pow(2).sum().cpu()
        else:
            replicated += p.grad.double().pow(2).sum().cpu()
    dist.all_reduce(local)
    norm = float((replicated + local).sqrt())
    if max_norm > 0:
        coef = min(max_norm / (norm + 1e-6), 1.0)
        if coef < 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return norm
