"""What a run reads before it trains: the backbone's architecture and weights, and the dataset.

Both are checked against the config first (architecture against the checkpoint's
``config.json``, data items against the model and the pyramid), so a mismatch stops the run with a
:class:`~pyrflow_fast.train.checkpoint.ConfigMismatchError` naming the field before any weights
are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..resample import Pyramid
from ..wan import WanDiT, get_config
from .checkpoint import ConfigMismatchError

__all__ = [
    "build_dataset",
    "check_dataset",
    "check_item",
    "load_backbone",
    "load_sharded_weights",
    "local_rows",
    "meta_backbone",
    "resolve_model_config",
]


def _config_diff(a, b) -> list[str]:
    da, db = asdict(a), asdict(b)
    return [f"{k}: checkpoint {da[k]!r} vs config {db[k]!r}" for k in da if da[k] != db[k]]


def resolve_model_config(arch: str, path: str):
    """The architecture named ``arch`` (``model.config``), checked against ``path``'s ``config.json``
    (no weights read); empty ``arch``: the checkpoint's."""
    named = get_config(arch) if arch else None
    if not path:
        if named is None:
            raise ConfigMismatchError("model.config must name an architecture when model.path is empty")
        return named
    from ..wan.checkpoint import read_config

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"model.path {folder} does not exist")
    stored = read_config(folder)
    if stored is None and named is None:
        raise ConfigMismatchError(f"{folder} has no config.json; set model.config to its architecture")
    if stored is not None and named is not None and stored != named:
        diff = "; ".join(_config_diff(stored, named))
        raise ConfigMismatchError(f"model.path {folder} does not match model.config {arch!r}: {diff}")
    return stored or named


def load_backbone(arch: str, path: str) -> WanDiT:
    """The WanDiT at ``path`` (checked against ``arch``), or a random initialisation of ``arch``."""
    config = resolve_model_config(arch, path)
    if not path:
        return WanDiT(config)
    from ..wan.checkpoint import load_wan

    return load_wan(Path(path), config=config)


def meta_backbone(arch: str, path: str) -> WanDiT:
    """The WanDiT of ``model.config`` / ``model.path`` (checked like :func:`load_backbone`) on the meta device:
    shapes only, no memory, to be sharded and then materialised (``to_empty``) and loaded shard by shard."""
    config = resolve_model_config(arch, path)
    with torch.device("meta"):
        return WanDiT(config)


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of the checkpoint at ``path`` (a folder in either layout, a file or an index)."""
    from ..wan.checkpoint import INDEX_NAME, WEIGHTS_NAME

    if path.is_dir():
        folder = path
        if not (folder / INDEX_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file():
            folder = path / "transformer"
        path = folder / INDEX_NAME if (folder / INDEX_NAME).is_file() else folder / WEIGHTS_NAME
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return [path.parent / shard for shard in shards]
    if path.name.endswith(".safetensors") and path.is_file():
        return [path]
    raise FileNotFoundError(
        f"{path}: sharded loading reads safetensors files (a Wan2.1 folder, a .safetensors file or its index); "
        "convert other weight files with pyrflow_fast.wan.checkpoint.save_wan"
    )


def local_rows(target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(local tensor, first row)`` of ``target``: a DTensor's local shard of FSDP2's dim-0 split (torch.chunk's
    rows), or a plain tensor and 0."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(target, DTensor):
        return target, 0
    mesh = target.device_mesh
    if mesh.ndim != 1 or target.placements != (Shard(0),):
        raise ValueError(
            f"sharded loading reads FSDP2's dim-0 shards (fully_shard on a 1-d mesh), not {target.placements}"
        )
    return target.to_local(), mesh.get_coordinate()[0] * -(-target.shape[0] // mesh.size())


@torch.no_grad()
def load_sharded_weights(module: torch.nn.Module, path: str | Path, prefix: str = "") -> None:
    """Fill the (materialised, possibly FSDP2-sharded) WanDiT ``module`` from the checkpoint at ``path``,
    reading from each safetensors file only the rows of this rank's shard of every tensor.

    Peak host memory is this rank's shard plus one tensor slice, not the model: a DTensor parameter
    ``(n, ...)`` sharded on dim 0 reads rows ``[offset, offset + local rows)``, a replicated one all of
    it. Values are cast to the parameter's dtype (bit-exact when the dtypes match). Raises
    :class:`ConfigMismatchError` naming the file on missing or unexpected keys, wrong shapes or
    non-finite values. ``prefix``: the WanDiT's name inside ``module`` (e.g. ``"backbone.model."``).
    """
    from safetensors import safe_open

    from ..wan.keys import is_diffusers_layout, to_original_key

    files = _weight_files(Path(path))
    handles = [safe_open(str(f), framework="pt") for f in files]
    stored = {k: (f, h, k) for f, h in zip(files, handles) for k in h.keys()}
    if is_diffusers_layout(stored):
        stored = {to_original_key(k): v for k, v in stored.items()}
    targets = {n[len(prefix) :]: t for n, t in module.state_dict(keep_vars=True).items() if n.startswith(prefix)}
    missing, unexpected = sorted(set(targets) - set(stored)), sorted(set(stored) - set(targets))
    if missing or unexpected:
        raise ConfigMismatchError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, target in targets.items():
        file, handle, name = stored[key]
        view = handle.get_slice(name)
        shape = tuple(view.get_shape())
        if shape != tuple(target.shape):
            raise ConfigMismatchError(f"{file}: {name} has shape {shape}, the model expects {tuple(target.shape)}")
        local, start = local_rows(target)
        if not local.numel():
            continue
        part = view[:] if local is target else view[start : start + local.shape[0]]
        if part.is_floating_point() and not torch.isfinite(part).all():
            raise ConfigMismatchError(f"{file}: {name} holds NaN or Inf values")
        local.copy_(part.reshape(local.shape))


def build_dataset(data, pyramid: Pyramid, in_dim: int, text_dim: int) -> Dataset:
    """The training dataset of the ``[data]`` section ``data`` (a latent cache or the synthetic family)."""
    if data.kind == "synthetic":
        from .synthetic import SyntheticPyramids

        return SyntheticPyramids(
            data.synthetic_samples,
            pyramid,
            channels=in_dim,
            size=tuple(data.synthetic_size),
            text_dim=text_dim,
            num_classes=data.synthetic_classes,
            seed=data.synthetic_seed,
        )
    try:
        from ..data.cache import LatentCache
    except ImportError as err:
        raise RuntimeError(
            "data.kind = 'cache' needs the module pyrflow_fast.data.cache (LatentCache), "
            f"which cannot be imported: {err}"
        ) from err
    if not data.path:
        raise FileNotFoundError("data.kind = 'cache' needs data.path, the cache directory")
    folder = Path(data.path)
    if not folder.exists():
        raise FileNotFoundError(f"data.path {folder} does not exist")
    if not os.access(folder, os.R_OK):
        raise PermissionError(f"data.path {folder} is not readable")
    return LatentCache(folder)


def check_item(item: dict, pyramid: Pyramid, model_config, source: str) -> None:
    """Raise :class:`ConfigMismatchError` when a data item does not fit the model and pyramid."""
    for key in ("x0s", "context", "context_len"):
        if key not in item:
            raise ConfigMismatchError(f"{source}: items must have 'x0s', 'context' and 'context_len'; missing {key!r}")
    x0s = item["x0s"]
    s = pyramid.num_stages
    if len(x0s) < s:
        raise ConfigMismatchError(f"{source}: items carry {len(x0s)} stage signals, the pyramid has {s} stages")
    x0 = x0s[0]
    if x0.ndim != 4 or x0.shape[0] != model_config.in_dim:
        raise ConfigMismatchError(
            f"{source}: stage-0 signal has shape {tuple(x0.shape)}; "
            f"the model takes (in_dim={model_config.in_dim}, F, H, W)"
        )
    expected = pyramid.shapes((1, *x0.shape))
    for i in range(s):
        if tuple(x0s[i].shape) != expected[i][1:]:
            raise ConfigMismatchError(
                f"{source}: stage {i} signal has shape {tuple(x0s[i].shape)}, the pyramid expects {expected[i][1:]}"
            )
        f, h, w = x0s[i].shape[-3:]
        if any(n % p for n, p in zip((f, h, w), model_config.patch_size)):
            raise ConfigMismatchError(
                f"{source}: stage {i} size {(f, h, w)} is not divisible by the patch {model_config.patch_size}"
            )
    ctx = item["context"]
    if ctx.ndim != 2 or ctx.shape[-1] != model_config.text_dim:
        raise ConfigMismatchError(
            f"{source}: context has shape {tuple(ctx.shape)}; the model takes (L, text_dim={model_config.text_dim})"
        )
    if int(item["context_len"]) > model_config.text_len:
        raise ConfigMismatchError(
            f"{source}: context_len {item['context_len']} exceeds the model's text_len {model_config.text_len}"
        )


def check_dataset(dataset: Dataset, pyramid: Pyramid, model_config, data) -> None:
    """Raise when ``dataset`` is empty, was built for another pyramid, or its first item does not fit the model,
    the pyramid or ``data.latent_size`` (a cache)."""
    if len(dataset) < 1:
        raise ValueError("the dataset is empty")
    data_pyramid = getattr(dataset, "pyramid", None)
    if data_pyramid is not None:
        have = [(tr.family, tuple(tr.factors)) for tr in data_pyramid.transitions]
        want = [(tr.family, tuple(tr.factors)) for tr in pyramid.transitions]
        if have[: len(want)] != want:
            raise ConfigMismatchError(
                f"the dataset's pyramid transitions {have} do not match the config's pyramid {want}"
            )
    first = dataset[0]
    check_item(first, pyramid, model_config, f"dataset ({data.kind})")
    size = tuple(first["x0s"][0].shape[-3:])
    if data.kind == "cache" and data.latent_size and size != tuple(data.latent_size):
        raise ConfigMismatchError(
            f"data.path {data.path}: stage-0 latents are {size}, "
            f"data.latent_size says {tuple(data.latent_size)} (set [] to accept any size)"
        )
