"""Named Wan2.1 transformer configurations and conversion to/from the two config.json dialects.

The original Wan2.1 release ships a ``config.json`` written for ``WanModel`` (keys ``dim``,
``ffn_dim``, ``num_heads`` ...); the diffusers release ships ``transformer/config.json`` for
``WanTransformer3DModel`` (keys ``num_attention_heads``, ``attention_head_dim`` ...). Both map onto
one frozen :class:`WanConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["WanConfig", "CONFIGS", "get_config"]

# Bounds far above every Wan2.1 model (14B: 40 layers, width 5120, FFN 13824, 512 tokens) that stop a
# mistyped config before it allocates anything (num_layers = 20000 would take minutes and many GB).
_MAX_LAYERS = 1000
_MAX_WIDTH = 1 << 16
_MAX_FFN = 1 << 18
_MAX_TEXT_LEN = 1 << 16


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is not a layer count)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of a Wan2.1 text-to-video diffusion transformer.

    Defaults are those of Wan2.1-T2V-1.3B.

    :param patch_size: (pt, ph, pw) patch of the Conv3d patch embedding.
    :param dim: model width.
    :param ffn_dim: hidden width of the feed-forward network.
    :param freq_dim: size of the sinusoidal timestep embedding.
    :param num_heads: attention heads; the head dimension is ``dim // num_heads``.
    :param num_layers: number of transformer blocks.
    :param in_dim: latent channels in.
    :param out_dim: latent channels out.
    :param text_dim: width of the text-encoder embeddings (umT5-XXL: 4096).
    :param text_len: text tokens; shorter contexts are zero-padded to this length, as in Wan.
    :param eps: epsilon of every LayerNorm and RMSNorm.
    :param rope_theta: RoPE base.
    :param rope_max_positions: RoPE table length per axis in Wan (positions must be below it).
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024

    def __post_init__(self) -> None:
        """Reject impossible or absurd sizes (ValueError naming the field) before anything is built."""
        patch = self.patch_size
        if not isinstance(patch, (tuple, list)) or len(patch) != 3 or not all(_is_int(p) and p >= 1 for p in patch):
            raise ValueError(f"WanConfig.patch_size must be three positive ints (pt, ph, pw), got {patch!r}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in patch))
        bounds = {
            "dim": _MAX_WIDTH,
            "ffn_dim": _MAX_FFN,
            "freq_dim": _MAX_WIDTH,
            "num_heads": _MAX_WIDTH,
            "num_layers": _MAX_LAYERS,
            "in_dim": _MAX_WIDTH,
            "out_dim": _MAX_WIDTH,
            "text_dim": _MAX_WIDTH,
            "text_len": _MAX_TEXT_LEN,
            "rope_max_positions": _MAX_TEXT_LEN,
        }
        for name, most in bounds.items():
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= most:
                raise ValueError(f"WanConfig.{name} must be an int in [1, {most}], got {value!r}")
        for name in ("eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"WanConfig.{name} must be a positive finite number, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(
                f"WanConfig: head dim {self.head_dim} (dim {self.dim} / num_heads {self.num_heads}) must be even and "
                "at least 6 (RoPE splits it over 3 axes)"
            )
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even (sin and cos halves), got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        """``pt * ph * pw``."""
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def replace(self, **changes: Any) -> WanConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- config.json dialects
    def to_original_dict(self) -> dict[str, Any]:
        """The ``config.json`` of the original Wan2.1 release (``WanModel``)."""
        return {
            "_class_name": "WanModel",
            "model_type": "t2v",
            "patch_size": list(self.patch_size),
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "text_dim": self.text_dim,
            "text_len": self.text_len,
            "eps": self.eps,
            "window_size": [-1, -1],
            "qk_norm": True,
            "cross_attn_norm": True,
        }

    @classmethod
    def from_original_dict(cls, d: dict[str, Any]) -> WanConfig:
        """Parse an original Wan2.1 ``config.json``.

        Keys Wan itself ignores (``patch_size``, ``text_dim``, ``qk_norm``, ``cross_attn_norm``,
        ``window_size`` are in ``WanModel.ignore_for_config``) are taken when present and must
        describe the supported architecture.
        """
        model_type = d.get("model_type", "t2v")
        if model_type != "t2v":
            raise ValueError(f"only text-to-video Wan models are supported, config has model_type={model_type!r}")
        if list(d.get("window_size", [-1, -1])) != [-1, -1]:
            raise ValueError(f"only global attention is supported, config has window_size={d['window_size']}")
        if not d.get("qk_norm", True) or not d.get("cross_attn_norm", True):
            raise ValueError("only qk_norm=True and cross_attn_norm=True (as in every Wan2.1 checkpoint) are supported")
        fields = (
            "dim",
            "ffn_dim",
            "freq_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "text_len",
            "eps",
        )
        kwargs: dict[str, Any] = {k: d[k] for k in fields if k in d}
        if "patch_size" in d:
            kwargs["patch_size"] = tuple(d["patch_size"])
        return cls(**kwargs)

    def to_diffusers_dict(self) -> dict[str, Any]:
        """The ``transformer/config.json`` of diffusers' ``WanTransformer3DModel``.

        diffusers has no ``text_len`` (its pipeline pads prompts to 512 tokens); a ``text_len``
        other than 512 is recorded under that key, which diffusers ignores and
        :meth:`from_diffusers_dict` reads.
        """
        extra = {} if self.text_len == 512 else {"text_len": self.text_len}
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": self.eps,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": self.rope_max_positions,
            "pos_embed_seq_len": None,
            **extra,
        }

    @classmethod
    def from_diffusers_dict(cls, d: dict[str, Any], text_len: int = 512) -> WanConfig:
        """Parse a diffusers ``WanTransformer3DModel`` config; ``text_len`` (not a diffusers key) is
        taken from the config when it records one, else from the argument."""
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if d.get(key) is not None:
                raise ValueError(f"only text-to-video Wan2.1 is supported, config has {key}={d[key]!r}")
        if d.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads" or not d.get("cross_attn_norm", True):
            raise ValueError("only qk_norm='rms_norm_across_heads' and cross_attn_norm=True are supported")
        heads = d.get("num_attention_heads", 40)
        return cls(
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            dim=heads * d.get("attention_head_dim", 128),
            ffn_dim=d.get("ffn_dim", 13824),
            freq_dim=d.get("freq_dim", 256),
            num_heads=heads,
            num_layers=d.get("num_layers", 40),
            in_dim=d.get("in_channels", 16),
            out_dim=d.get("out_channels") or d.get("in_channels", 16),
            text_dim=d.get("text_dim", 4096),
            text_len=d.get("text_len", text_len),
            eps=d.get("eps", 1e-6),
            rope_max_positions=d.get("rope_max_seq_len", 1024),
        )


#: Named configurations. ``tiny`` and ``tiny-3layer`` are for CPU tests; ``shapes`` is the shipped
#: pixel-space model of :mod:`pyrflow_fast.shapes` (RGB in, 4 x 4 pixel patches, 1.2M parameters).
CONFIGS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "tiny": WanConfig(
        dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=8
    ),
    "shapes": WanConfig(
        dim=128,
        ffn_dim=512,
        freq_dim=64,
        num_heads=4,
        num_layers=4,
        in_dim=3,
        out_dim=3,
        text_dim=32,
        text_len=16,
        patch_size=(1, 4, 4),
    ),
    "tiny-3layer": WanConfig(
        dim=48, ffn_dim=96, freq_dim=16, num_heads=2, num_layers=3, in_dim=4, out_dim=6, text_dim=12, text_len=6
    ),
}

# the shapes model with 2 x 2 pixel patches (4x the tokens): a 14-18 px object spans 7-9 tokens, not 3-4,
# so its outline is a token-level decision (a lever of the shapes recipe search, not shipped)
CONFIGS["shapes-p2"] = CONFIGS["shapes"].replace(patch_size=(1, 2, 2))


def get_config(name: str | WanConfig) -> WanConfig:
    """Look up a named configuration (a :class:`WanConfig` is returned unchanged)."""
    if isinstance(name, WanConfig):
        return name
    try:
        return CONFIGS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown Wan config {name!r}; known: {', '.join(CONFIGS)}") from None
