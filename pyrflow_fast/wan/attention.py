"""Which attention kernel :class:`~pyrflow_fast.wan.WanDiT` runs, selectable and reportable.

Backends (:data:`BACKENDS`):

- ``auto``: ``torch.nn.functional.scaled_dot_product_attention`` choosing its kernel itself;
- ``math``, ``flash``, ``efficient``, ``cudnn``: SDPA pinned to one kernel with
  ``torch.nn.attention.sdpa_kernel`` (``flash`` is FlashAttention-2, ``efficient`` the memory-efficient kernel);
- ``flash3``: FlashAttention-3 (``flash_attn_interface.flash_attn_func``, Hopper GPUs);
- ``sage``: SageAttention (``sageattention.sageattn``, quantised QK^T).

:func:`available` lists what this machine can run, :func:`use` selects one for a block of code and
:func:`current` names the selection (for logs)::

    with attention.use("cudnn"):
        video = model(x, t, context)

The model calls :func:`attend` (cross-attention) and :func:`attend_self` (self-attention) with
``(B, L, heads, head_dim)`` tensors, the layout FlashAttention and SageAttention take natively (SDPA
gets a transposed view). :func:`self_attention` swaps the self-attention function for a block of
code, e.g. a context-parallel one (:mod:`pyrflow_fast.parallel`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from functools import cache

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["BACKENDS", "attend", "attend_self", "available", "current", "self_attention", "use"]

BACKENDS: tuple[str, ...] = ("auto", "math", "flash", "efficient", "cudnn", "flash3", "sage")
"""Every backend name :func:`use` knows."""

_SDPA: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
_SDPA_ENABLED: dict[str, Callable[[], bool]] = {
    "flash": torch.backends.cuda.flash_sdp_enabled,
    "efficient": torch.backends.cuda.mem_efficient_sdp_enabled,
    "cudnn": torch.backends.cuda.cudnn_sdp_enabled,
}
_current = "auto"
_self_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@cache
def _module(name: str):
    """The imported module, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def available() -> list[str]:
    """The backends this machine can run, in :data:`BACKENDS` order.

    ``auto`` and ``math`` run everywhere. The fused SDPA kernels need a CUDA device and their
    ``torch.backends.cuda.*_sdp_enabled()`` switch on (``flash`` also an Ampere or newer GPU,
    ``cudnn`` an importable cuDNN); ``flash3`` and ``sage`` need CUDA and their package.
    """
    out = ["auto", "math"]
    if not torch.cuda.is_available():
        return out
    for name, enabled in _SDPA_ENABLED.items():
        if not enabled():
            continue
        if name == "flash" and torch.cuda.get_device_capability() < (8, 0):
            continue
        if name == "cudnn" and not torch.backends.cudnn.is_available():
            continue
        out.append(name)
    if _module("flash_attn_interface") is not None:
        out.append("flash3")
    if _module("sageattention") is not None:
        out.append("sage")
    return out


def current() -> str:
    """The selected backend's name (``auto`` unless inside :func:`use`)."""
    return _current


@contextlib.contextmanager
def use(name: str) -> Iterator[str]:
    """Run the model's attention with backend ``name`` inside the ``with`` block (nests; restores on exit).

    :raises ValueError: for a name outside :data:`BACKENDS` or one this machine cannot run
        (the message lists :func:`available`).
    """
    global _current
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
    runnable = available()
    if name not in runnable:
        raise ValueError(f"attention backend {name!r} is not available here; available: {', '.join(runnable)}")
    previous, _current = _current, name
    try:
        with sdpa_kernel(_SDPA[name]) if name in _SDPA else contextlib.nullcontext():
            yield name
    finally:
        _current = previous


@contextlib.contextmanager
def self_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Route the model's *self*-attention through ``fn(q, k, v)`` inside the ``with`` block (nests; restores on exit).

    ``fn`` takes and returns :func:`attend`'s ``(B, L, H, D)`` tensors; cross-attention keeps :func:`attend`.
    Context parallelism (:mod:`pyrflow_fast.parallel`) uses it: the blocks then hold a shard of the tokens
    and ``fn`` attends to the keys of every rank.
    """
    global _self_attention
    previous, _self_attention = _self_attention, fn
    try:
        yield
    finally:
        _self_attention = previous


def attend_self(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The model's self-attention: :func:`attend`, or the function set by :func:`self_attention`."""
    return attend(q, k, v) if _self_attention is None else _self_attention(q, k, v)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention, no mask, scale ``head_dim ** -0.5``, with the selected backend.

    :param q: ``(B, Lq, H, D)``.
    :param k: ``(B, Lk, H, D)``, same dtype as ``q``.
    :param v: ``(B, Lk, H, D)``, same dtype as ``q``.
    :returns: ``(B, Lq, H, D)`` in ``q``'s dtype.
    """
    if _current == "flash3":
        out = _module("flash_attn_interface").flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out  # FA3 releases differ: out, or (out, lse)
    if _current == "sage":
        return _module("sageattention").sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
