r"""Low-rank adapters on the attention and FFN Linear layers of a :class:`~pyrflow_fast.wan.WanDiT`.

Each adapted Linear ``W`` gets ``num_sets`` adapter pairs ``A_s`` ``(r, in)`` and ``B_s``
``(out, r)`` (``B`` starts at zero, so training starts from the base model); the layer computes
``W x + (alpha / r) B_s A_s x`` with ``s`` the active set. The base model is untouched (its
state-dict keys stay Wan's): the adapters live in a separate module and act through forward
hooks, so the base can be frozen, sharded and saved as usual.

Per-stage LoRA (``num_sets = S``) selects the set of the sub-batch's stage; a shared LoRA has one
set. :meth:`LoRA.merged_state_dict` folds one set into the weights: one merged checkpoint per
stage for per-stage LoRA (each exact at its stage only), a single one for shared LoRA.

>>> from pyrflow_fast.wan import WanDiT
>>> base = WanDiT("tiny")
>>> lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
>>> len(lora.layers), tuple(lora.layers[0].a.shape), lora.scale
(20, (3, 2, 32), 2.0)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRA", "TARGETS"]

TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)
"""Adapted Linear layers inside every block (attention projections and both FFN layers)."""


class _Adapter(nn.Module):
    def __init__(self, name: str, linear: nn.Linear, rank: int, num_sets: int) -> None:
        super().__init__()
        self.name = name
        self.a = nn.Parameter(torch.empty(num_sets, rank, linear.in_features, device=linear.weight.device))
        self.b = nn.Parameter(torch.zeros(num_sets, linear.out_features, rank, device=linear.weight.device))
        for s in range(num_sets):  # PEFT's default: kaiming-uniform A, zero B
            nn.init.kaiming_uniform_(self.a.data[s], a=math.sqrt(5))


class LoRA(nn.Module):
    """Adapters for every Linear of :data:`TARGETS` in ``model.blocks``.

    :param model: the base :class:`~pyrflow_fast.wan.WanDiT` (hooks are registered on it).
    :param rank: adapter rank ``r``.
    :param alpha: scale numerator (``alpha / r``); 0 means ``alpha = r``.
    :param num_sets: adapter sets (``S`` for per-stage LoRA, 1 for shared).
    """

    def __init__(self, model: nn.Module, rank: int, alpha: float = 0.0, num_sets: int = 1) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = float(alpha) if alpha else float(rank)
        self.scale = self.alpha / rank
        self.num_sets = num_sets
        self.active = 0
        self.enabled = True
        layers = []
        self._handles = []
        for i, block in enumerate(model.blocks):
            for target in TARGETS:
                linear = block.get_submodule(target)
                adapter = _Adapter(f"blocks.{i}.{target}", linear, rank, num_sets)
                layers.append(adapter)
                self._handles.append(linear.register_forward_hook(self._hook(len(layers) - 1)))
        self.layers = nn.ModuleList(layers)

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            adapter = self.layers[index]
            s = self.active
            delta = F.linear(F.linear(inputs[0], adapter.a[s]), adapter.b[s])
            return output + self.scale * delta

        return hook

    def select(self, stage: int) -> None:
        """Make the set of ``stage`` active (always set 0 for a shared LoRA)."""
        self.active = stage if self.num_sets > 1 else 0

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model without adapters (the distillation teacher)."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def remove(self) -> None:
        """Detach the hooks from the base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def merged_state_dict(
        self, base_state: dict[str, torch.Tensor], stage: int = 0, adapters: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Base weights with set ``stage`` folded in: ``W + (alpha / r) B_s A_s`` (float32 math).

        :param base_state: the base model's state dict (Wan key names).
        :param adapters: this module's state dict to merge (default: the current parameters).
        """
        adapters = adapters if adapters is not None else {k: v.detach() for k, v in self.state_dict().items()}
        out = dict(base_state)
        for i, layer in enumerate(self.layers):
            key = f"{layer.name}.weight"
            w = base_state[key]
            a, b = adapters[f"layers.{i}.a"][stage].float(), adapters[f"layers.{i}.b"][stage].float()
            out[key] = (w.float() + self.scale * (b @ a).to(w.device)).to(w.dtype)
        return out
