"""The text keys and values of :meth:`pyrflow_fast.wan.WanDiT.text_cache`, kept per context tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["TextKVCache"]

TextKV = list[tuple[torch.Tensor, torch.Tensor]]


class TextKVCache:
    """Every block's cross-attention keys and values for the last ``size`` context tensors (oldest dropped).

    Entries are keyed on the context's identity and version (an in-place change recomputes), its
    device and the autocast state; each entry keeps its context, so the id cannot be reused while cached.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: dict[tuple, tuple[torch.Tensor, TextKV]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, context: torch.Tensor, compute: Callable[[torch.Tensor], TextKV]) -> TextKV:
        """The keys and values of ``context`` ``(B, L, text_dim)``: cached, or ``compute(context)`` on a miss."""
        device = context.device.type
        version = -1 if context.is_inference() else context._version  # inference tensors have no version
        key = (id(context), version, context.device, torch.is_autocast_enabled(device))
        key += (torch.get_autocast_dtype(device),)
        hit = self._entries.pop(key, None)
        if hit is None or hit[0] is not context:
            hit = (context, compute(context))
        self._entries[key] = hit  # most recently used last
        while len(self._entries) > self.size:
            self._entries.pop(next(iter(self._entries)))
        return hit[1]
