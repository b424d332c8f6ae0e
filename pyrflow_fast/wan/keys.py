"""State-dict key mapping between the original Wan2.1 layout and diffusers' layout.

``WanDiT`` uses the original names. diffusers' ``WanTransformer3DModel`` renames them as follows
(per block, prefix ``blocks.N.``; note that the original ``norm3`` -- the affine LayerNorm before
cross-attention -- is diffusers' ``norm2``, and vice versa)::

    modulation              <-> scale_shift_table
    self_attn.{q,k,v}       <-> attn1.to_{q,k,v}
    self_attn.o             <-> attn1.to_out.0
    self_attn.norm_{q,k}    <-> attn1.norm_{q,k}
    cross_attn.*            <-> attn2.*            (same pattern)
    norm3                   <-> norm2
    norm2                   <-> norm3
    ffn.0                   <-> ffn.net.0.proj
    ffn.2                   <-> ffn.net.2

and globally::

    patch_embedding         <-> patch_embedding
    text_embedding.0 / .2   <-> condition_embedder.text_embedder.linear_1 / linear_2
    time_embedding.0 / .2   <-> condition_embedder.time_embedder.linear_1 / linear_2
    time_projection.1       <-> condition_embedder.time_proj
    head.head               <-> proj_out
    head.modulation         <-> scale_shift_table

The mapping is applied to module prefixes (a key is ``prefix.param`` or, for the modulation tables,
the prefix itself), so unlike a chain of ``str.replace`` it is order independent and invertible. Keys
that match no rule are returned unchanged, so they surface as "unexpected" in a strict load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

__all__ = [
    "to_diffusers_key",
    "to_original_key",
    "to_diffusers_state_dict",
    "to_original_state_dict",
    "is_diffusers_layout",
]

V = TypeVar("V")

_BLOCK_RULES: tuple[tuple[str, str], ...] = (
    ("modulation", "scale_shift_table"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("norm3", "norm2"),
    ("norm2", "norm3"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
)

_GLOBAL_RULES: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _apply(rules: tuple[tuple[str, str], ...], name: str, forward: bool) -> str | None:
    for a, b in rules:
        src, dst = (a, b) if forward else (b, a)
        if name == src:
            return dst
        if name.startswith(src + ".") and name.count(".") == src.count(".") + 1:
            return dst + name[len(src) :]
    return None


def _map(key: str, forward: bool) -> str:
    m = _BLOCK_RE.match(key)
    if m:
        rest = _apply(_BLOCK_RULES, m.group(2), forward)
        return key if rest is None else f"blocks.{m.group(1)}.{rest}"
    out = _apply(_GLOBAL_RULES, key, forward)
    return key if out is None else out


def to_diffusers_key(key: str) -> str:
    """Original Wan2.1 key -> diffusers key (unknown keys unchanged).

    >>> to_diffusers_key("blocks.3.norm3.weight")
    'blocks.3.norm2.weight'
    >>> to_diffusers_key("head.modulation")
    'scale_shift_table'
    """
    return _map(key, True)


def to_original_key(key: str) -> str:
    """diffusers key -> original Wan2.1 key (unknown keys unchanged).

    >>> to_original_key("blocks.0.attn2.to_out.0.bias")
    'blocks.0.cross_attn.o.bias'
    """
    return _map(key, False)


def to_diffusers_state_dict(sd: Mapping[str, V]) -> dict[str, V]:
    """Rename every key of an original-layout state dict to the diffusers layout."""
    return {to_diffusers_key(k): v for k, v in sd.items()}


def to_original_state_dict(sd: Mapping[str, V]) -> dict[str, V]:
    """Rename every key of a diffusers-layout state dict to the original layout."""
    return {to_original_key(k): v for k, v in sd.items()}


def is_diffusers_layout(keys: object) -> bool:
    """Whether a collection of keys uses diffusers' names (``condition_embedder.*`` / ``proj_out.*``)."""
    return any(str(k).startswith(("condition_embedder.", "proj_out.")) for k in keys)  # type: ignore[attr-defined]
