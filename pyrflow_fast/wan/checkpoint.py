"""Load and save ``WanDiT`` weights in the original Wan2.1 layout and in the diffusers layout.

Layouts understood by :func:`load_wan` (``path`` may be any of these):

- original Wan2.1 download (e.g. ``Wan-AI/Wan2.1-T2V-1.3B``): a folder with ``config.json``
  (``WanModel`` keys) and ``diffusion_pytorch_model.safetensors``, or shards
  ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` listed in
  ``diffusion_pytorch_model.safetensors.index.json`` (the 14B release);
- diffusers download (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): the repository root containing
  ``transformer/`` or the ``transformer`` folder itself, with ``config.json``
  (``WanTransformer3DModel`` keys) and single or sharded safetensors;
- a single weight file: ``*.safetensors``, a ``*.safetensors.index.json``, or a ``*.pth`` / ``*.pt``
  (read with ``torch.load(weights_only=True)``; never unpickled freely).

Every weight file pyrflow reads goes through :func:`read_safetensors` or :func:`load_torch_file`: a
truncated or corrupt safetensors file, and a ``.pt``/``.pth`` holding pickled objects other than
tensors and plain containers (code that would run on load), are refused with a
:class:`CheckpointError` that names the file.

Key names (original or diffusers) are detected from the keys themselves, so any file layout may
carry either key style. Loading is strict: missing keys, unexpected keys and shape mismatches are
collected and raised together as one :class:`CheckpointError`; NaN/Inf values are reported (raised
by default). Tensors are assigned as loaded (no copy, no cast unless ``dtype`` is given), so the
loaded weights are bit-identical to the file.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import WanConfig, get_config
from .keys import is_diffusers_layout, to_diffusers_state_dict, to_original_state_dict
from .model import WanDiT

__all__ = [
    "CheckpointError",
    "NonFiniteWeightsWarning",
    "WEIGHTS_NAME",
    "INDEX_NAME",
    "load_torch_file",
    "read_json_object",
    "read_safetensors",
    "safetensors_metadata",
    "read_state_dict",
    "read_config",
    "check_state_dict",
    "nonfinite_report",
    "load_wan",
    "save_wan",
    "write_state_dict",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_SHOW = 5  # how many keys of each kind an error message lists


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (missing/unexpected keys, wrong shapes, non-finite values)."""


class NonFiniteWeightsWarning(UserWarning):
    """Emitted by :func:`load_wan` with ``nonfinite="warn"`` when weights contain NaN or Inf."""


# --------------------------------------------------------------------------------- reading
def _not_safetensors(path: str | Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors file ({err}); re-download or re-convert it")


def read_safetensors(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``, on ``device``: the one safetensors reader of pyrflow.

    :raises CheckpointError: naming the file when it is truncated or its header is not valid safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise _not_safetensors(path, err) from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of the safetensors file ``path`` (``{}`` when it has none).

    :raises CheckpointError: as :func:`read_safetensors`.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as err:
        raise _not_safetensors(path, err) from None


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors, numbers, strings and plain
    containers only; nothing pickled is executed.

    :raises CheckpointError: naming the file when it holds other pickled objects (a payload that would run
        code on load is refused, not run) or is not a readable torch file (truncated, another format).
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is mostly advice to turn weights_only off; keep only the line naming the global
        lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(err).splitlines()]
        named = [line for line in lines if "GLOBAL" in line]
        reason = named[0].split(". ")[0] if named else lines[0]
        raise CheckpointError(
            f"{path}: refused: Weights only load failed ({reason}). pyrflow loads only tensors and plain "
            "containers from .pt/.pth files and never runs pickled code; re-download the file, or convert it to "
            "safetensors with a tool you trust"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"{path}: not a readable torch file ({str(err).splitlines()[0]}); re-download it"
        ) from None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a config or an index); a CheckpointError naming the file and ``what`` it
    should be when it is not valid JSON or not an object."""
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not a valid {what} ({err}); re-download or re-convert it") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a valid {what} (expected a JSON object, got {type(obj).__name__})")
    return obj


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    name = path.name
    if name.endswith(".safetensors.index.json") or name.endswith(".index.json"):
        index = read_json_object(path, "index file")
        if "weight_map" not in index:
            raise CheckpointError(f"{path}: index file has no 'weight_map'")
        out: dict[str, torch.Tensor] = {}
        shards = sorted(set(index["weight_map"].values()))
        for shard in shards:
            part = _read_file(path.parent / shard)
            for key, value in part.items():
                if index["weight_map"].get(key) != shard:
                    raise CheckpointError(f"{path}: key {key!r} found in {shard} but indexed elsewhere")
                out[key] = value
        absent = sorted(set(index["weight_map"]) - set(out))
        if absent:
            raise CheckpointError(f"{path}: {len(absent)} indexed keys are absent from their shards: {absent[:_SHOW]}")
        return out
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith((".pth", ".pt", ".bin")):
        obj = load_torch_file(path)
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: expected a mapping of names to tensors")
        return dict(obj)
    raise CheckpointError(f"{path}: unknown weight file type (expected .safetensors, .index.json, .pth, .pt)")


def _resolve(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file or index, config.json or None) for a file or folder in either layout."""
    path = Path(path)
    if path.is_file():
        config = path.parent / "config.json"
        return path, config if config.is_file() else None
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not (path / INDEX_NAME).is_file() and not (path / WEIGHTS_NAME).is_file() and (path / "transformer").is_dir():
        path = path / "transformer"
    for name in (INDEX_NAME, WEIGHTS_NAME):
        if (path / name).is_file():
            config = path / "config.json"
            return path / name, config if config.is_file() else None
    raise FileNotFoundError(f"{path}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found (nor a transformer/ folder)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read raw tensors (keys as stored) from a file or folder in either layout."""
    return _read_file(_resolve(path)[0])


def read_config(path: str | Path, text_len: int = 512) -> WanConfig | None:
    """Read ``config.json`` next to the weights (either dialect); ``None`` when there is none.

    :param text_len: used for diffusers configs, which do not record it.
    """
    config = _resolve(path)[1]
    if config is None:
        return None
    d = read_json_object(config, "Wan transformer config")
    try:
        if d.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in d:
            return WanConfig.from_diffusers_dict(d, text_len=text_len)
        return WanConfig.from_original_dict(d)
    except ValueError as err:
        raise CheckpointError(f"{config}: not a valid Wan transformer config ({err})") from None


# ------------------------------------------------------------------------------- checking
def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")
    return f"{len(items)} {title}: {shown}"


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Raise one :class:`CheckpointError` listing missing keys, unexpected keys and shape
    mismatches (counts and the first few of each), or return ``None`` when ``sd`` fits exactly."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        _listing(title, items)
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))


def assign_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(sd, strict=True, assign=True)`` with every tensor in memory of its own.

    Tensors read from a safetensors file share its buffer, and some start off the 64-byte
    alignment the allocator gives; CPU kernels pick other code paths for those, so a loaded
    model would differ from the saved one in the last bit. Those tensors are copied (tied
    tensors once, keeping the tie).
    """
    own: dict[int, torch.Tensor] = {}
    for v in sd.values():
        if id(v) not in own:
            aligned = v.is_meta or (v.is_contiguous() and v.data_ptr() % 64 == 0)
            own[id(v)] = v if aligned else v.clone(memory_format=torch.contiguous_format)
    model.load_state_dict({k: own[id(v)] for k, v in sd.items()}, strict=True, assign=True)


def nonfinite_report(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """``{key: (number of NaN, number of Inf)}`` for every floating tensor that has any."""
    report = {}
    for key, value in sd.items():
        if value.is_floating_point():
            n_nan = int(torch.isnan(value).sum())
            n_inf = int(torch.isinf(value).sum())
            if n_nan or n_inf:
                report[key] = (n_nan, n_inf)
    return report


def _nonfinite_message(report: Mapping[str, tuple[int, int]]) -> str:
    items = [f"{k} ({n} NaN, {i} Inf)" for k, (n, i) in sorted(report.items())]
    return "non-finite weights: " + _listing("tensors", items)


# -------------------------------------------------------------------------------- loading
def load_wan(
    path: str | Path,
    config: WanConfig | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    nonfinite: str = "raise",
    text_len: int = 512,
) -> WanDiT:
    """Load a :class:`~pyrflow_fast.wan.model.WanDiT` from a checkpoint in either layout.

    :param path: a folder or file (see the module docstring).
    :param config: the architecture; by default read from ``config.json`` next to the weights.
    :param dtype: cast floating weights to this dtype (default: keep the stored dtype, bit-exact).
    :param device: move weights there (default: stay on CPU).
    :param nonfinite: ``"raise"`` (default), ``"warn"`` (:class:`NonFiniteWeightsWarning`) or
        ``"ignore"`` when weights contain NaN or Inf.
    :param text_len: text length for diffusers configs, which do not store it.
    :raises CheckpointError: on missing/unexpected keys or shape mismatches (all listed in one
        error), or on non-finite weights with ``nonfinite="raise"``.
    """
    if nonfinite not in ("raise", "warn", "ignore"):
        raise ValueError(f"nonfinite must be 'raise', 'warn' or 'ignore', got {nonfinite!r}")
    cfg = get_config(config) if config is not None else read_config(path, text_len=text_len)
    if cfg is None:
        raise CheckpointError(f"{path}: no config.json next to the weights; pass config=<name or WanConfig>")
    sd = read_state_dict(path)
    if is_diffusers_layout(sd):
        sd = to_original_state_dict(sd)
    with torch.device("meta"):
        model = WanDiT(cfg)
    check_state_dict(model, sd)
    if nonfinite != "ignore":
        report = nonfinite_report(sd)
        if report and nonfinite == "raise":
            raise CheckpointError(_nonfinite_message(report))
        if report:
            warnings.warn(_nonfinite_message(report), NonFiniteWeightsWarning, stacklevel=2)
    if dtype is not None or device is not None:
        sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in sd.items()}
    assign_state_dict(model, sd)
    return model


# --------------------------------------------------------------------------------- saving
def _parse_size(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    s = size.strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * factor)
    return int(s)


def write_state_dict(
    sd: Mapping[str, torch.Tensor], folder: str | Path, max_shard_size: int | str | None = None
) -> Path:
    """Write safetensors into ``folder``: one ``diffusion_pytorch_model.safetensors``, or shards
    plus ``diffusion_pytorch_model.safetensors.index.json`` when the total exceeds
    ``max_shard_size`` (bytes, or a string like ``"5GB"``). Returns the weights file or index."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    limit = _parse_size(max_shard_size)
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    total = sum(sizes.values())
    if limit is None or total <= limit:
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder / WEIGHTS_NAME
    shards: list[list[str]] = [[]]
    used = 0
    for key in tensors:
        if shards[-1] and used + sizes[key] > limit:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder / INDEX_NAME


def save_wan(
    model: WanDiT, path: str | Path, *, layout: str = "original", max_shard_size: int | str | None = None
) -> Path:
    """Save ``model`` as a checkpoint folder.

    :param layout: ``"original"`` writes ``path/config.json`` (``WanModel`` keys) and the weights
        with original key names into ``path``; ``"diffusers"`` writes ``path/transformer/config.json``
        (``WanTransformer3DModel``) and weights with diffusers key names, the layout of a diffusers
        repository (diffusers loads it with ``subfolder="transformer"``).
    :param max_shard_size: shard when the weights exceed this many bytes (int or e.g. ``"5GB"``).
    :returns: the folder the weights were written to.
    """
    folder = Path(path)
    sd: dict[str, torch.Tensor] = model.state_dict()
    if layout == "original":
        config: dict[str, Any] = model.config.to_original_dict()
    elif layout == "diffusers":
        folder = folder / "transformer"
        sd = to_diffusers_state_dict(sd)
        config = model.config.to_diffusers_dict()
    else:
        raise ValueError(f"layout must be 'original' or 'diffusers', got {layout!r}")
    write_state_dict(sd, folder, max_shard_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
