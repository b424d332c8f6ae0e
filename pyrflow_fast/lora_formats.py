r"""LoRA files in the formats diffusers, peft and ComfyUI use for Wan2.1, and LoRA at sampling time.

pyrflow's adapters (:class:`~pyrflow_fast.train.lora.LoRA`) are keyed by the Wan module names of
:class:`~pyrflow_fast.wan.WanDiT` (``blocks.0.self_attn.q``). On disk a LoRA file is a safetensors
file of ``A`` ``(r, in)`` / ``B`` ``(out, r)`` pairs per adapted Linear, in one of these key forms:

=============  ===================================================================  ======================
form           key of ``A`` (``B``: ``lora_B`` / ``lora_up``)                        alpha
=============  ===================================================================  ======================
``diffusers``  ``transformer.blocks.0.attn1.to_q.lora_A.weight``                    metadata, else ``r``
peft           ``blocks.0.attn1.to_q.lora_A.weight`` (no prefix)                    ``r``
``comfyui``    ``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` (or            ``...q.alpha`` tensors,
               ``lora_down``; Wan's original names)                                  else ``r``
=============  ===================================================================  ======================

:func:`save_lora_file` writes the ``diffusers`` form (``WanPipeline.load_lora_weights`` reads it,
rank and alpha in diffusers' ``lora_adapter_metadata``) or the ``comfyui`` one (read by ComfyUI
and by diffusers' converter of ``diffusion_model.`` files); :func:`read_lora_file` reads any of them.
diffusers' names are mapped to Wan's with :mod:`pyrflow_fast.wan.keys`.

:class:`~pyrflow_fast.train.lora.LoRA` reads and writes its adapters through these functions
(``LoRA.save``, ``LoRA.load``, ``LoRA.from_files``).

>>> diffusers_module("blocks.3.ffn.0"), wan_module("blocks.3.attn2.to_out.0")
('blocks.3.ffn.net.0.proj', 'blocks.3.cross_attn.o')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .wan.keys import to_diffusers_key, to_original_key

__all__ = [
    "FORMS",
    "LoraFile",
    "diffusers_module",
    "read_lora_file",
    "save_lora_file",
    "wan_module",
]

FORMS = ("diffusers", "comfyui")
"""Key forms :func:`save_lora_file` writes."""

_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
_PAIR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)\.weight$")
_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_EXPECTED = (
    "expected LoRA keys like 'transformer.blocks.0.attn1.to_q.lora_A.weight' (diffusers), "
    "'blocks.0.attn1.to_q.lora_A.weight' (peft) or 'diffusion_model.blocks.0.self_attn.q.lora_A.weight' / "
    "'.lora_down.weight' + '.alpha' (ComfyUI) on the attention projections and FFN layers of the blocks"
)


def diffusers_module(name: str) -> str:
    """diffusers' name of a WanDiT module (``blocks.0.self_attn.o`` -> ``blocks.0.attn1.to_out.0``)."""
    return to_diffusers_key(f"{name}.weight")[: -len(".weight")]


def wan_module(name: str) -> str:
    """WanDiT's name of a diffusers module (unknown names unchanged)."""
    return to_original_key(f"{name}.weight")[: -len(".weight")]


@dataclass(frozen=True)
class LoraFile:
    """The contents of a LoRA file.

    :param tensors: ``{Wan module name: (A (r, in), B (out, r))}`` (float32).
    :param rank: the common rank ``r``.
    :param alpha: the scale numerator (the layer adds ``(alpha / r) B A x``).
    """

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float


def save_lora_file(
    path: str | Path,
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    alpha: float,
    *,
    form: str = "diffusers",
) -> Path:
    """Write ``{Wan module name: (A (r, in), B (out, r))}`` as a safetensors LoRA file in ``form``; returns its path.

    ``diffusers``: keys ``transformer.<diffusers module>.lora_A.weight``, rank, alpha and target modules in
    diffusers' ``lora_adapter_metadata`` (what ``WanPipeline.save_lora_weights`` writes). ``comfyui``: keys
    ``diffusion_model.<Wan module>.lora_A.weight`` and a scalar ``diffusion_model.<Wan module>.alpha``.
    """
    from safetensors.torch import save_file

    if form not in FORMS:
        raise ValueError(f"unknown LoRA file form {form!r}; expected one of {FORMS}")
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    metadata = {"format": "pt"}
    if form == "diffusers":
        modules = []
        for name, (a, b) in tensors.items():
            module = diffusers_module(name)
            modules.append(module)
            out[f"transformer.{module}.lora_A.weight"] = a
            out[f"transformer.{module}.lora_B.weight"] = b
        config = {"r": int(rank), "lora_alpha": float(alpha), "target_modules": sorted(modules), "lora_dropout": 0.0}
        metadata[_METADATA_KEY] = json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True)
    else:
        for name, (a, b) in tensors.items():
            out[f"diffusion_model.{name}.lora_A.weight"] = a
            out[f"diffusion_model.{name}.lora_B.weight"] = b
            out[f"diffusion_model.{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in out.items()}, str(path), metadata=metadata)
    return path


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def read_lora_file(path: str | Path, modules: Sequence[str] | None = None) -> LoraFile:
    """Read a LoRA file in the diffusers, peft or ComfyUI key form (module docstring).

    :param modules: the Wan module names the model adapts (``LoRA.names``); keys of other modules
        are an error. ``None``: accept any module.
    :raises FileNotFoundError: no such file.
    :raises ValueError: keys that are no LoRA pair of an adapted module (the first ones are listed
        with the expected form), ``A`` without ``B``, ranks or alphas that differ between modules.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        raw = {k: f.get_tensor(k) for k in f.keys()}
    known = set(modules) if modules is not None else None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unmatched = []
    for key in sorted(raw):
        stripped = _strip(key)
        pair, alpha = _PAIR.match(stripped), _ALPHA.match(stripped)
        match = pair or alpha
        module = wan_module(match.group("module")) if match else None
        if module is None or (known is not None and module not in known):
            unmatched.append(key)
        elif pair:
            kind = "A" if pair.group("kind") in ("lora_A", "lora_down") else "B"
            pairs.setdefault(module, {})[kind] = raw[key].float()
        else:
            alphas[module] = float(raw[key])
    if unmatched or not pairs:
        shown = ", ".join(repr(k) for k in unmatched[:5]) + (
            f" (+{len(unmatched) - 5} more)" if len(unmatched) > 5 else ""
        )
        what = f"{len(unmatched)} keys match no adapted layer of the model: {shown}" if unmatched else "no LoRA keys"
        raise ValueError(f"{path}: {what}; {_EXPECTED}")
    incomplete = sorted(m for m, p in pairs.items() if len(p) != 2)
    if incomplete:
        raise ValueError(f"{path}: modules with only one of A (lora_A/lora_down) and B (lora_B/lora_up): {incomplete}")
    ranks = {m: int(p["A"].shape[0]) for m, p in pairs.items()}
    if len(set(ranks.values())) > 1:
        by_rank: dict[int, list[str]] = {}
        for m, r in ranks.items():
            by_rank.setdefault(r, []).append(m)
        listed = "; ".join(f"rank {r}: {ms[:3]}{' ...' if len(ms) > 3 else ''}" for r, ms in sorted(by_rank.items()))
        raise ValueError(f"{path}: the modules have different LoRA ranks ({listed}); pyrflow needs one rank")
    rank = next(iter(ranks.values()))
    if alphas:
        if sorted(alphas) != sorted(pairs):
            raise ValueError(
                f"{path}: '.alpha' for some modules only (missing: {sorted(set(pairs) - set(alphas))[:5]})"
            )
        if len(set(alphas.values())) > 1:
            raise ValueError(f"{path}: the modules have different LoRA alphas {sorted(set(alphas.values()))}")
        alpha = next(iter(alphas.values()))
    else:
        config = json.loads(metadata[_METADATA_KEY]) if _METADATA_KEY in metadata else {}
        if config.get("transformer.rank_pattern") or config.get("transformer.alpha_pattern"):
            raise ValueError(f"{path}: per-module rank_pattern / alpha_pattern in the metadata are not supported")
        meta_rank = config.get("transformer.r", rank)
        if int(meta_rank) != rank:
            raise ValueError(f"{path}: metadata says rank {meta_rank}, the tensors have rank {rank}")
        alpha = float(config.get("transformer.lora_alpha", rank))
    return LoraFile({m: (p["A"], p["B"]) for m, p in pairs.items()}, rank, alpha)
