"""State-dict mapping between Wan2.1's own umT5 encoder and transformers' ``UMT5EncoderModel``.

Wan2.1 ships the text encoder as ``models_t5_umt5-xxl-enc-bf16.pth``, the state dict of
``wan.modules.t5.T5Encoder`` (umT5-XXL, ``shared_pos=False``: one relative-position table per
block). Its names map one to one onto ``UMT5EncoderModel``::

    token_embedding                       <-> shared                  (encoder.embed_tokens is tied to it)
    blocks.N.norm1                        <-> encoder.block.N.layer.0.layer_norm
    blocks.N.attn.{q,k,v,o}               <-> encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
    blocks.N.pos_embedding.embedding      <-> encoder.block.N.layer.0.SelfAttention.relative_attention_bias
    blocks.N.norm2                        <-> encoder.block.N.layer.1.layer_norm
    blocks.N.ffn.gate.0                   <-> encoder.block.N.layer.1.DenseReluDense.wi_0
    blocks.N.ffn.fc1                      <-> encoder.block.N.layer.1.DenseReluDense.wi_1
    blocks.N.ffn.fc2                      <-> encoder.block.N.layer.1.DenseReluDense.wo
    norm                                  <-> encoder.final_layer_norm

Wan's feed-forward is ``fc2(fc1(x) * GELU_tanh(gate(x)))``; transformers' gated FFN is
``wo(gelu_new(wi_0(x)) * wi_1(x))``, so the activated branch ``gate.0`` is ``wi_0`` and the linear
branch ``fc1`` is ``wi_1``. Neither scales the attention logits, both use T5's bidirectional
relative-position buckets (``max_distance`` 128) and RMS layer norms with eps 1e-6.

Keys that match no rule are returned unchanged, so a strict load reports them as unexpected.

>>> to_hf_t5_key("blocks.3.ffn.gate.0.weight")
'encoder.block.3.layer.1.DenseReluDense.wi_0.weight'
>>> to_wan_t5_key("encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight")
'blocks.3.pos_embedding.embedding.weight'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "to_hf_t5_key",
    "to_wan_t5_key",
    "to_hf_t5_state_dict",
    "to_wan_t5_state_dict",
    "infer_umt5_config",
    "TIED_EMBEDDING",
]

V = TypeVar("V")

#: transformers' encoder-side copy of ``shared.weight`` (tied; a saved checkpoint may omit either).
TIED_EMBEDDING = "encoder.embed_tokens.weight"

_GLOBAL = (("token_embedding", "shared"), ("norm", "encoder.final_layer_norm"))
_BLOCK = (
    ("norm1", "layer.0.layer_norm"),
    ("attn.q", "layer.0.SelfAttention.q"),
    ("attn.k", "layer.0.SelfAttention.k"),
    ("attn.v", "layer.0.SelfAttention.v"),
    ("attn.o", "layer.0.SelfAttention.o"),
    ("pos_embedding.embedding", "layer.0.SelfAttention.relative_attention_bias"),
    ("norm2", "layer.1.layer_norm"),
    ("ffn.gate.0", "layer.1.DenseReluDense.wi_0"),
    ("ffn.fc1", "layer.1.DenseReluDense.wi_1"),
    ("ffn.fc2", "layer.1.DenseReluDense.wo"),
)
_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)\.(weight|bias)")


def _rename(key: str, side: int, block: re.Pattern, block_prefix: str) -> str:
    """Rename ``key`` from ``side`` of the tables (0: Wan, 1: HF) to the other: both directions read one table."""
    for pair in _GLOBAL:
        src = pair[side]
        if key.startswith(src + ".") and key.count(".") == src.count(".") + 1:
            return pair[1 - side] + key[len(src) :]
    m = block.fullmatch(key)
    if m:
        for pair in _BLOCK:
            if m.group(2) == pair[side]:
                return f"{block_prefix}.{m.group(1)}.{pair[1 - side]}.{m.group(3)}"
    return key


def to_hf_t5_key(key: str) -> str:
    """Wan ``T5Encoder`` key -> ``UMT5EncoderModel`` key (unknown keys unchanged)."""
    return _rename(key, 0, _WAN_BLOCK, "encoder.block")


def to_wan_t5_key(key: str) -> str:
    """``UMT5EncoderModel`` key -> Wan ``T5Encoder`` key (unknown keys unchanged)."""
    return _rename(key, 1, _HF_BLOCK, "blocks")


def to_hf_t5_state_dict(sd: Mapping[str, V]) -> dict[str, V]:
    """Rename a Wan ``T5Encoder`` state dict for ``UMT5EncoderModel`` and add the tied
    ``encoder.embed_tokens.weight`` (the same tensor as ``shared.weight``)."""
    out = {to_hf_t5_key(k): v for k, v in sd.items()}
    if "shared.weight" in out and TIED_EMBEDDING not in out:
        out[TIED_EMBEDDING] = out["shared.weight"]
    return out


def to_wan_t5_state_dict(sd: Mapping[str, V]) -> dict[str, V]:
    """Rename a ``UMT5EncoderModel`` state dict to Wan's ``T5Encoder`` names, dropping the tied
    ``encoder.embed_tokens.weight`` (Wan stores the embedding once)."""
    out = {to_wan_t5_key(k): v for k, v in sd.items() if k != TIED_EMBEDDING}
    if "token_embedding.weight" not in out and TIED_EMBEDDING in sd:  # only the encoder copy was stored
        out["token_embedding.weight"] = sd[TIED_EMBEDDING]
    return out


def infer_umt5_config(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``UMT5Config`` keyword arguments read off the tensor shapes of a Wan ``T5Encoder`` state dict.

    Everything Wan's ``umt5_xxl`` fixes that shapes do not show is Wan's value: gated tanh-GELU
    FFN, RMS-norm eps 1e-6, relative-position ``max_distance`` 128, one position table per block.
    For ``models_t5_umt5-xxl-enc-bf16.pth`` this gives umT5-XXL (vocab 256384, d_model 4096,
    d_ff 10240, 64 heads of 64, 24 layers, 32 buckets).

    :raises ValueError: when the keys do not look like a Wan ``T5Encoder`` (per-block positions).
    """
    need = (
        "token_embedding.weight",
        "blocks.0.attn.q.weight",
        "blocks.0.pos_embedding.embedding.weight",
        "blocks.0.ffn.fc1.weight",
    )
    absent = [k for k in need if k not in sd]
    if absent:
        shared = "pos_embedding.embedding.weight" in sd
        hint = " (a shared position table, shared_pos=True, is not umT5)" if shared else ""
        raise ValueError(f"not a Wan umT5 encoder state dict: missing {', '.join(absent)}{hint}")
    vocab, d_model = sd["token_embedding.weight"].shape
    inner = sd["blocks.0.attn.q.weight"].shape[0]
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    if inner % heads:
        raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _WAN_BLOCK.fullmatch(k)))
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "d_kv": int(inner // heads),
        "d_ff": int(sd["blocks.0.ffn.fc1.weight"].shape[0]),
        "num_layers": int(layers),
        "num_heads": int(heads),
        "relative_attention_num_buckets": int(buckets),
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
    }
