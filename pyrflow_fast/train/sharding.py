"""Every model of an FSDP run is built on the meta device, sharded per block, then materialised shard by shard.

:func:`sharded_wan` is the one path of the finetune and the distillation methods (student, critic,
teachers): the :class:`~pyrflow_fast.wan.WanDiT` of ``model.config`` / a checkpoint is built on
``meta`` (no memory), its LoRA adapters are attached there too, every block is sharded with FSDP2
``fully_shard`` together with its adapters (one FSDP group per block,
:func:`~pyrflow_fast.parallel.wan.shard_blocks`), and only then are the
shards allocated (``to_empty``) and filled: read from the checkpoint shard by shard
(:func:`~pyrflow_fast.train.inputs.load_sharded_weights`), copied from another model's shards of
the same layout (:func:`copy_shards`), or initialised as a new ``WanDiT`` would be
(:func:`init_like_new`). No rank ever holds more than its shards plus one block (a random
initialisation) or one tensor slice (a checkpoint).

A random initialisation draws exactly what ``WanDiT(config)`` followed by ``LoRA(...)`` would draw
from the global RNG, in the same order, so a sharded run starts from the same weights as an
unsharded one and the draws after it are the same (:func:`full_random`: a random op on a shard
draws the whole tensor and keeps the shard's rows).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..parallel.wan import shard_blocks
from ..wan import WanDiT
from .inputs import load_sharded_weights, local_rows, meta_backbone

__all__ = [
    "copy_shards",
    "full_random",
    "init_like_new",
    "mp_policy",
    "prime",
    "sharded_wan",
]


def mp_policy(bf16: bool):
    """FSDP2's mixed precision: bf16 all-gathers and compute with float32 gradient reduction when ``bf16``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


@torch.no_grad()
def _copy_rows(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's rows of the whole tensor ``full`` into ``target`` (a shard or a plain tensor)."""
    local, start = local_rows(target)
    if local is target:
        local.copy_(full)
    elif local.numel():
        local.copy_(full[start : start + local.shape[0]])


class full_random(TorchDispatchMode):
    """Inside it, an in-place random op (``uniform_``, ``normal_``: every ``nn.init`` and ``reset_parameters``)
    on a DTensor shard draws the whole tensor from the global RNG and keeps the shard's rows, so every
    rank holds its slice of what one process would draw and the RNG advances as in one process."""

    _OPS = (torch.ops.aten.uniform_, torch.ops.aten.normal_)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in self._OPS and hasattr(args[0], "device_mesh"):
            target = args[0]
            full = torch.empty(target.shape, dtype=target.dtype, device=target.to_local().device)
            func(full, *args[1:], **kwargs)
            _copy_rows(target, full)
            return target
        return func(*args, **kwargs)


def _construct(child: nn.Module, config) -> nn.Module:
    """A freshly constructed copy of ``child`` (a direct child of a WanDiT), drawing from the global RNG what
    its construction inside ``WanDiT.__init__`` draws: Wan's own modules (blocks, head) take the config;
    torch's (embeddings) construct by ``reset_parameters``."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(child).__mro__ if not issubclass(c, FSDPModule))  # FSDP2 swaps in a subclass
    if cls.__module__.startswith("pyrflow_fast.wan"):
        return cls(config)
    fresh = copy.deepcopy(child).to_empty(device="cpu")
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh


@torch.no_grad()
def init_like_new(model: WanDiT) -> None:
    """Fill the materialised (possibly block-sharded) ``model`` with the weights ``WanDiT(model.config)`` would
    start from under the current global RNG, drawing the same numbers in the same order: each child is
    constructed in turn (a block at a time), its rows copied, then ``init_weights`` runs under :func:`full_random`."""
    for name, child in model.named_children():
        for i, part in enumerate(child if isinstance(child, nn.ModuleList) else [child]):
            fresh = _construct(part, model.config)
            target = child[i] if isinstance(child, nn.ModuleList) else child
            for (key, t), (k2, v) in zip(target.state_dict(keep_vars=True).items(), fresh.state_dict().items()):
                if key != k2:
                    raise RuntimeError(f"{name}: constructed {k2}, the model has {key}")
                _copy_rows(t, v)
    with full_random():
        model.init_weights()


@torch.no_grad()
def copy_shards(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s weights into ``dst`` (dtypes may differ): shard to shard where both hold the same local
    shape, else through the whole tensor (gathered from ``src``'s shards: a collective)."""
    for (key, d), s in zip(dst.state_dict(keep_vars=True).items(), src.state_dict(keep_vars=True).values()):
        if d.shape != s.shape:
            raise RuntimeError(f"{key}: {tuple(s.shape)} cannot fill {tuple(d.shape)} (another architecture)")
        dl, sl = local_rows(d)[0], local_rows(s)[0]
        if hasattr(d, "device_mesh") == hasattr(s, "device_mesh") and dl.shape == sl.shape:
            dl.copy_(sl)
        else:
            _copy_rows(d, s.full_tensor() if hasattr(s, "full_tensor") else s)


def prime(module: nn.Module) -> None:
    """All-gather and free every FSDP group of ``module`` once, one group at a time, so FSDP allocates its
    unsharded buffers outside inference mode (a frozen model called first under ``torch.inference_mode``
    would otherwise keep inference tensors that a later ``no_grad`` call cannot use)."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.unshard()
            m.reshard()


def sharded_wan(
    arch: str,
    path: str,
    device: torch.device,
    *,
    bf16: bool,
    dtype: torch.dtype = torch.float32,
    lora: Callable[[WanDiT], nn.Module] | None = None,
    copy_from: nn.Module | None = None,
    shard: bool = True,
) -> tuple[WanDiT, nn.Module | None]:
    """The WanDiT of ``arch`` / ``path`` in ``dtype``, its blocks sharded (with the adapters ``lora(model)``
    attaches, built on meta too) and materialised on ``device``: loaded from ``path``, else copied from the
    shards of ``copy_from`` (same architecture and sharding), else initialised as a new WanDiT (then the
    adapters as peft initialises them: the draws of an unsharded ``WanDiT(config)`` + ``LoRA``).

    The root is left to the caller (``fully_shard`` of the module whose forward the run calls).
    ``shard=False``: the same without FSDP (a whole copy or initialisation on one rank).
    Returns ``(model, adapters or None)``.
    """
    model = meta_backbone(arch, path).to(dtype)
    adapters = None
    if lora is not None:
        with torch.device("meta"):
            adapters = lora(model)
    if shard:
        shard_blocks(model, mp_policy=mp_policy(bf16), lora=adapters)
    model.to_empty(device=device)
    if adapters is not None:
        adapters.to_empty(device=device)
    if path:
        load_sharded_weights(model, path)
    elif copy_from is not None:
        copy_shards(model, copy_from)
    else:
        init_like_new(model)
    if adapters is not None:
        with full_random():
            adapters.reset_adapters()
    return model, adapters
