"""State-dict mapping between Wan2.1's VAE (``Wan2.1_VAE.pth``) and diffusers' ``AutoencoderKLWan``.

``Wan2.1_VAE.pth`` is the state dict of ``wan.modules.vae.WanVAE_`` (``dim`` 96, ``z_dim`` 16,
``dim_mult`` [1, 2, 4, 4], ``num_res_blocks`` 2, no attention scales, temporal downsampling
[False, True, True]). A residual block is ``residual = [RMS_norm, SiLU, CausalConv3d, RMS_norm,
SiLU, Dropout, CausalConv3d]`` plus an optional 1x1x1 ``shortcut``; diffusers names the same
parameters::

    residual.0.gamma / residual.2.* / residual.3.gamma / residual.6.* / shortcut.*
    norm1.gamma      / conv1.*      / norm2.gamma      / conv2.*      / conv_shortcut.*

Module prefixes::

    conv1 / conv2                        <-> quant_conv / post_quant_conv
    {encoder,decoder}.conv1              <-> {encoder,decoder}.conv_in
    {encoder,decoder}.head.0 / head.2    <-> {encoder,decoder}.norm_out / conv_out
    {encoder,decoder}.middle.0 / 1 / 2   <-> {encoder,decoder}.mid_block.resnets.0 / attentions.0 / resnets.1
    encoder.downsamples.N                <-> encoder.down_blocks.N     (same flat list)
    decoder.upsamples.N                  <-> decoder.up_blocks.S.resnets.J or decoder.up_blocks.S.upsamplers.0

The decoder's flat list holds, per stage S, ``num_res_blocks + 1`` residual blocks followed by one
``Resample`` (all stages but the last), so with ``P = num_res_blocks + 2``:
``N = S * P + J`` for ``resnets.J`` and ``N = S * P + num_res_blocks + 1`` for the upsampler. For
Wan's ``num_res_blocks = 2`` this is diffusers' hard-coded table (0-2, 4-6, 8-10, 12-14 residual;
3, 7, 11 upsamplers). Resample (``resample.1.*``, ``time_conv.*``) and attention (``norm.gamma``,
``to_qkv.*``, ``proj.*``) parameter names are the same in both. Decoder attention blocks
(``attn_scales`` non-empty) are not supported: diffusers' decoder has none.

Keys that match no rule are returned unchanged, so a strict load reports them as unexpected.

>>> to_diffusers_vae_key("decoder.upsamples.7.time_conv.weight", num_res_blocks=2)
'decoder.up_blocks.1.upsamplers.0.time_conv.weight'
>>> to_original_vae_key("decoder.up_blocks.1.resnets.0.conv_shortcut.bias", num_res_blocks=2)
'decoder.upsamples.4.shortcut.bias'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "to_diffusers_vae_key",
    "to_original_vae_key",
    "to_diffusers_vae_state_dict",
    "to_original_vae_state_dict",
    "infer_vae_config",
    "WAN_LATENTS_MEAN",
    "WAN_LATENTS_STD",
]

V = TypeVar("V")

#: Wan2.1's per-channel latent statistics (``wan/modules/vae.py``, z_dim 16).
WAN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
WAN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip

_RES_PARAMS = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_RES_PARAMS_INV = {v: k for k, v in _RES_PARAMS.items()}
_PREFIXES = (  # (original, diffusers), exact module prefixes
    ("conv1", "quant_conv"),
    ("conv2", "post_quant_conv"),
    ("encoder.conv1", "encoder.conv_in"),
    ("decoder.conv1", "decoder.conv_in"),
    ("encoder.head.0", "encoder.norm_out"),
    ("encoder.head.2", "encoder.conv_out"),
    ("decoder.head.0", "decoder.norm_out"),
    ("decoder.head.2", "decoder.conv_out"),
)
_PREFIX_TO_DIFFUSERS = dict(_PREFIXES)
_PREFIX_TO_ORIGINAL = {d: o for o, d in _PREFIXES}
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}
_MIDDLE_INV = {v: k for k, v in _MIDDLE.items()}

# Block rules per direction: (key pattern, rename) where ``rename(num_res_blocks, *groups but the
# last)`` gives (the renamed module, whether the last group holds residual-block parameter names),
# or None when the rule does not apply after all.
_TO_DIFFUSERS = (
    (
        r"(encoder|decoder)\.middle\.(\d+)\.(.+)",
        lambda n, part, i: (f"{part}.mid_block.{_MIDDLE[i]}", True) if i in _MIDDLE else None,
    ),
    (r"encoder\.downsamples\.(\d+)\.(.+)", lambda n, i: (f"encoder.down_blocks.{i}", True)),
    (r"decoder\.upsamples\.(\d+)\.(.+)", lambda n, i: _up_block(*divmod(int(i), n + 2), n)),
)
_TO_ORIGINAL = (
    (
        r"(encoder|decoder)\.mid_block\.(resnets\.\d+|attentions\.\d+)\.(.+)",
        lambda n, part, sub: (f"{part}.middle.{_MIDDLE_INV[sub]}", True) if sub in _MIDDLE_INV else None,
    ),
    (r"encoder\.down_blocks\.(\d+)\.(.+)", lambda n, i: (f"encoder.downsamples.{i}", True)),
    (
        r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
        lambda n, s, j: (f"decoder.upsamples.{int(s) * (n + 2) + int(j)}", True) if int(j) <= n else None,
    ),
    (
        r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
        lambda n, s: (f"decoder.upsamples.{int(s) * (n + 2) + n + 1}", False),
    ),
)


def _up_block(stage: int, j: int, num_res_blocks: int) -> tuple[str, bool]:
    """Diffusers' module for entry ``j`` of decoder stage ``stage``: a residual block, or last the upsampler."""
    if j <= num_res_blocks:
        return f"decoder.up_blocks.{stage}.resnets.{j}", True
    return f"decoder.up_blocks.{stage}.upsamplers.0", False


def _rename(key: str, num_res_blocks: int, prefixes: dict[str, str], rules: tuple, params: dict[str, str]) -> str:
    """Rename ``key`` by the exact module ``prefixes``, else the first block rule that applies (one engine for
    both directions)."""
    prefix, _, param = key.rpartition(".")
    if prefix in prefixes:
        return f"{prefixes[prefix]}.{param}"
    for pattern, rename in rules:
        if m := re.fullmatch(pattern, key):
            *groups, rest = m.groups()
            if (found := rename(num_res_blocks, *groups)) is not None:
                module, residual = found
                return f"{module}.{params.get(rest, rest) if residual else rest}"
    return key


def to_diffusers_vae_key(key: str, num_res_blocks: int = 2) -> str:
    """``Wan2.1_VAE.pth`` key -> ``AutoencoderKLWan`` key (unknown keys unchanged)."""
    return _rename(key, num_res_blocks, _PREFIX_TO_DIFFUSERS, _TO_DIFFUSERS, _RES_PARAMS)


def to_original_vae_key(key: str, num_res_blocks: int = 2) -> str:
    """``AutoencoderKLWan`` key -> ``Wan2.1_VAE.pth`` key (unknown keys unchanged)."""
    return _rename(key, num_res_blocks, _PREFIX_TO_ORIGINAL, _TO_ORIGINAL, _RES_PARAMS_INV)


def to_diffusers_vae_state_dict(sd: Mapping[str, V], num_res_blocks: int = 2) -> dict[str, V]:
    """Rename every key of a ``Wan2.1_VAE.pth`` state dict (see :func:`to_diffusers_vae_key`)."""
    return {to_diffusers_vae_key(k, num_res_blocks): v for k, v in sd.items()}


def to_original_vae_state_dict(sd: Mapping[str, V], num_res_blocks: int = 2) -> dict[str, V]:
    """Rename every key of an ``AutoencoderKLWan`` state dict (see :func:`to_original_vae_key`)."""
    return {to_original_vae_key(k, num_res_blocks): v for k, v in sd.items()}


def infer_vae_config(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``AutoencoderKLWan`` config entries read off the tensor shapes of a ``Wan2.1_VAE.pth`` state dict.

    ``base_dim`` (width of ``encoder.conv1``), ``z_dim`` (``conv2``), ``num_res_blocks`` (residual
    blocks before the first encoder downsample), ``dim_mult`` (output widths of each encoder stage
    / ``base_dim``) and ``temperal_downsample`` (whether each encoder ``Resample`` has a
    ``time_conv``). For Wan's file this gives 96, 16, 2, [1, 2, 4, 4], [False, True, True].
    ``latents_mean``/``latents_std`` are not stored in the file and are not returned.

    :raises ValueError: when the keys do not look like a Wan2.1 VAE, or it has attention blocks
        outside the middle (``attn_scales`` non-empty, which diffusers cannot represent).
    """
    need = ("encoder.conv1.weight", "conv2.weight", "encoder.downsamples.0.residual.2.weight")
    absent = [k for k in need if k not in sd]
    if absent:
        raise ValueError(f"not a Wan2.1 VAE state dict: missing {', '.join(absent)}")
    base = int(sd["encoder.conv1.weight"].shape[0])
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    stages: list[list[int]] = [[]]  # residual-block output widths per stage
    temporal: list[bool] = []
    for i in idx:
        p = f"encoder.downsamples.{i}."
        if p + "residual.2.weight" in sd:
            stages[-1].append(int(sd[p + "residual.2.weight"].shape[0]))
        elif p + "resample.1.weight" in sd:
            temporal.append(p + "time_conv.weight" in sd)
            stages.append([])
        elif p + "to_qkv.weight" in sd:
            raise ValueError("VAE has attention blocks in its down/up path (attn_scales); not supported")
        else:
            raise ValueError(f"unrecognised VAE block encoder.downsamples.{i}")
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"VAE encoder stages have unequal numbers of residual blocks: {[len(s) for s in stages]}")
    if any(w % base for s in stages for w in s):
        raise ValueError("VAE stage widths are not multiples of the base width")
    return {
        "base_dim": base,
        "z_dim": int(sd["conv2.weight"].shape[0]),
        "dim_mult": [s[-1] // base for s in stages],
        "num_res_blocks": counts.pop(),
        "attn_scales": [],
        "temperal_downsample": temporal,
    }
