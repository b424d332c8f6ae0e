r"""Offline latent cache: encode a :class:`~pyrflow_fast.data.dataset.VideoTextDataset` once, train many times.

Format (version 1), a folder ``CACHE``:

``CACHE/index.json``::

    {"version": 1, "definition": 1 | 2, "num_samples": N, "num_stages": S,
     "resampler": "haar", "factors": [2, 2, 2], "latent_shape": [C, F, H, W],
     "text_len": L, "text_dim": D, "shards": ["shard-00000.safetensors", ...],
     "skipped": {reason: count}, "source": {...free-form provenance...}}

``resampler``/``factors`` describe the latent pyramid (uniform transitions, first-frame rule: Wan
latents always have ``1 + k`` frames). Each shard is a safetensors file with

- ``latents`` ``(n, C, F, H, W)`` float32: stage-0 normalised latents (natural units, which are
  the orthonormal units of stage 0);
- ``context`` ``(n, L, D)`` float32: prompt embeddings, zero beyond the prompt's tokens;
- ``context_len`` ``(n,)`` int64: the prompt's token count (rows at and beyond it are zero);
- Definition 2 only: ``stage1`` ... ``stage{S-1}`` ``(n, C, F_i, H_i, W_i)`` float32: clean stage
  latents in orthonormal units (pixel pyramid, encoded, times the gain :math:`g_i`).

Shard metadata (safetensors' string header) also lists the source ``videos`` and ``captions`` as
JSON, for debugging. Shards and the index are written to a temporary name and moved into place
with ``os.replace``, and the index is written last, so a killed writer never leaves a half-written
file under a final name, and a folder without ``index.json`` is an incomplete cache.

:class:`LatentCache` reads it: ``cache[i]`` is ``{"x0s": [S tensors (C, F_i, H_i, W_i)] finest
first, "context": (L, D), "context_len": int}`` (Definition 1 computes the coarser stages on the fly
with :func:`pyrflow_fast.process.clean_pyramid_latent`).

Command line::

    python -m pyrflow_fast.data.cache --data ROOT --captions captions.csv --model-dir DIR \
        --out CACHE --frames 17 --height 64 --width 64 --fps 8 --definition 1 --shard-size 64

Videos that cannot give a clip are skipped and counted by reason (``missing``, ``unreadable``,
``no_video_stream``, ``decode_error``, ``too_short``, ``too_large``: frames above
``--max-pixels``, default DCI 4K, or out of memory while decoding); the summary line names them.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from pyrflow_ref.resample import TRANSITION_FAMILIES

from ..card import latent_pyramid
from ..cli_help import DefaultsFormatter
from ..process import clean_pyramid_latent
from ..resample import WAN_PYRAMID, Pyramid
from .pyramid import DEFINITIONS, clean_pyramid
from .video import DEFAULT_MAX_PIXELS

__all__ = ["CACHE_VERSION", "INDEX_FILE", "LatentCache", "main", "shard_name", "write_cache"]

logger = logging.getLogger("pyrflow_fast.data")

CACHE_VERSION = 1
INDEX_FILE = "index.json"
_TMP_SUFFIX = ".tmp"
_INDEX_KEYS = (
    "version", "definition", "num_samples", "num_stages", "resampler", "factors",
    "latent_shape", "text_len", "text_dim", "shards", "skipped", "source",
)  # fmt: skip


def shard_name(k: int) -> str:
    """File name of shard ``k``.

    >>> shard_name(3)
    'shard-00003.safetensors'
    """
    return f"shard-{k:05d}.safetensors"


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then ``os.replace`` onto ``path``; the temp file never survives an error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _uniform_pyramid(pyramid: Pyramid) -> tuple[str, list[int]]:
    transitions = pyramid.transitions
    if not transitions:
        return "haar", [2, 2, 2]
    first = transitions[0]
    if any(
        (tr.family, tr.factors, tr.first_frame) != (first.family, first.factors, first.first_frame)
        for tr in transitions
    ):
        raise ValueError(
            "the cache format stores one resampler and one set of factors: the pyramid's transitions must be identical"
        )
    if not first.first_frame:
        raise ValueError("Wan latents have 1 + k frames: the latent pyramid must use the first-frame rule")
    if first.family not in TRANSITION_FAMILIES:
        raise ValueError(f"the cache needs an orthonormal latent pyramid {TRANSITION_FAMILIES}, got {first.family!r}")
    return first.family, list(first.factors)


class _Loaded(Dataset):
    """Wraps a dataset so that workers return skip records instead of raising (counted in the main process)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        from .video import VideoSkipped

        try:
            return self.dataset[i]
        except VideoSkipped as err:
            return {"skipped": (err.path, err.reason, err.detail)}


def _first(batch):
    return batch[0]


def _context_len(context: torch.Tensor) -> torch.Tensor:
    """Per prompt: 1 + index of the last non-zero embedding row (``encode_prompt`` zeroes the rest)."""
    nonzero = context.ne(0).any(dim=-1)  # (B, L)
    pos = torch.arange(1, context.shape[1] + 1, device=context.device).expand_as(nonzero)
    return torch.where(nonzero, pos, 0).amax(dim=1).to(torch.int64)


def write_cache(
    dataset,
    components,
    out_dir: str | Path,
    definition: int = 1,
    pyramid: Pyramid = WAN_PYRAMID,
    shard_size: int = 64,
    progress: bool = True,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    overwrite: bool = False,
    source: dict | None = None,
) -> dict:
    """Encode ``dataset`` with ``components`` into a latent cache at ``out_dir``; returns the index.

    :param dataset: a :class:`~pyrflow_fast.data.dataset.VideoTextDataset` (or any dataset whose
        items are ``{"video": (3, F, H, W), "caption": str, "path": str}`` and that raises
        :class:`~pyrflow_fast.data.video.VideoSkipped` for bad items and has ``record_skip`` /
        ``skipped``).
    :param components: :class:`~pyrflow_fast.pipeline.WanComponents` (``encode_video``,
        ``encode_prompt``, ``text_len``, ``text_dim``).
    :param definition: 1 (store stage 0; coarser stages computed when read) or 2 (also store the
        pixel-pyramid stages).
    :param pyramid: the latent pyramid; its transitions must be identical (see the format).
    :param shard_size: samples per shard file.
    :param progress: show a tqdm progress bar.
    :param batch_size: videos encoded together.
    :param num_workers: ``DataLoader`` worker processes decoding videos (0: in this process).
    :param overwrite: replace an existing cache at ``out_dir`` (its index is removed first).
    :param source: extra provenance merged into the index's ``source``.
    :raises FileExistsError: ``out_dir`` already holds a cache and ``overwrite`` is false.
    :raises ValueError: bad arguments, or no usable video at all.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be 1 or 2, got {definition!r}")
    if shard_size < 1 or batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"need shard_size, batch_size >= 1 and num_workers >= 0, got {shard_size}, {batch_size}, {num_workers}"
        )
    if shard_size % batch_size:
        raise ValueError(f"shard_size {shard_size} must be a multiple of batch_size {batch_size}")
    resampler, factors = _uniform_pyramid(pyramid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_FILE
    old = sorted(out.glob("shard-*.safetensors"))
    if (index_path.exists() or old) and not overwrite:
        raise FileExistsError(
            f"{out} already holds a latent cache ({INDEX_FILE} or shards); "
            "pass overwrite=True (--overwrite) to replace it"
        )
    index_path.unlink(missing_ok=True)
    for stale in out.glob(f".*{_TMP_SUFFIX}"):  # leftovers of a killed writer
        stale.unlink(missing_ok=True)

    shards: list[str] = []
    buf: dict[str, list[torch.Tensor]] = {}
    meta: dict[str, list[str]] = {"videos": [], "captions": []}
    num = 0
    latent_shape = None

    def flush() -> None:
        nonlocal buf, meta
        if not buf:
            return
        name = shard_name(len(shards))
        tensors = {k: torch.cat(v).contiguous() for k, v in buf.items()}
        metadata = {k: json.dumps(v) for k, v in meta.items()}
        _atomic_write(out / name, lambda p: save_file(tensors, str(p), metadata=metadata))
        shards.append(name)
        buf, meta = {}, {"videos": [], "captions": []}

    def encode(batch: list[dict]) -> None:
        nonlocal num, latent_shape
        video = torch.stack([b["video"] for b in batch])
        stages = clean_pyramid(video, definition, components, pyramid, kind="video")
        context = components.encode_prompt([b["caption"] for b in batch]).float().cpu()
        tensors = {"latents": stages[0], "context": context, "context_len": _context_len(context)}
        if definition == 2:
            tensors.update({f"stage{i}": s for i, s in enumerate(stages) if i > 0})
        if latent_shape is None:
            latent_shape = list(stages[0].shape[1:])
        for k, v in tensors.items():
            v = v.detach().cpu()
            buf.setdefault(k, []).append(v if k == "context_len" else v.to(torch.float32))
        meta["videos"] += [str(b["path"]) for b in batch]
        meta["captions"] += [b["caption"] for b in batch]
        num += len(batch)
        if sum(x.shape[0] for x in buf["latents"]) >= shard_size:
            flush()

    loader = DataLoader(_Loaded(dataset), batch_size=1, num_workers=num_workers, collate_fn=_first)
    pending: list[dict] = []
    with tqdm(total=len(dataset), disable=not progress, desc="caching", unit="video") as bar:
        for item in loader:
            bar.update(1)
            if "skipped" in item:
                dataset.record_skip(*item["skipped"])
                bar.set_postfix(skipped=sum(dataset.skipped.values()))
                continue
            pending.append(item)
            if len(pending) == batch_size:
                encode(pending)
                pending = []
        if pending:
            encode(pending)
        flush()

    skipped = dict(sorted(Counter(dataset.skipped).items()))
    if num == 0:
        raise ValueError(f"no usable video in the dataset (skipped: {skipped or 'none'}); nothing was cached in {out}")
    for stale in old:  # shards of a replaced cache beyond the new count
        if stale.name not in shards:
            stale.unlink(missing_ok=True)
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "first_frame": True}
    describe = getattr(dataset, "describe", None)
    if describe is not None:
        info.update(describe())
    if definition == 2:
        info["pixel_resampler"] = "avgpool"
    info["skipped_videos"] = [list(x) for x in getattr(dataset, "skipped_videos", [])]
    info.update(source or {})
    index = {
        "version": CACHE_VERSION,
        "definition": int(definition),
        "num_samples": num,
        "num_stages": pyramid.num_stages,
        "resampler": resampler,
        "factors": factors,
        "latent_shape": latent_shape,
        "text_len": int(components.text_len),
        "text_dim": int(components.text_dim),
        "shards": shards,
        "skipped": skipped,
        "source": info,
    }
    text = json.dumps(index, indent=2) + "\n"
    _atomic_write(index_path, lambda p: p.write_text(text))
    total = sum(skipped.values())
    logger.info(
        "cached %d samples in %d shards at %s; skipped %d videos%s", num, len(shards), out, total,
        (": " + ", ".join(f"{k}={v}" for k, v in skipped.items())) if total else "",
    )  # fmt: skip
    return index


class LatentCache(Dataset):
    """Read a latent cache written by :func:`write_cache`.

    ``cache[i]`` -> ``{"x0s": [S tensors (C, F_i, H_i, W_i)], "context": (L, D), "context_len": int}``:
    clean stage signals in orthonormal units, finest first. ``cache.index`` is ``index.json``;
    ``cache.pyramid`` the latent pyramid it describes.

    :raises FileNotFoundError: no ``index.json`` (missing or incomplete cache) or a missing shard.
    :raises ValueError: an unsupported version, missing index keys, or shards whose tensors do not
        match the index.
    """

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{index_path} not found: {self.path} is not a latent cache, or its writer did not finish"
            )
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{index_path} is not valid JSON: {err}") from None
        if not isinstance(index, dict):
            raise ValueError(f"{index_path}: expected a JSON object")
        if index.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{index_path}: unsupported cache version {index.get('version')!r} "
                f"(this reader reads version {CACHE_VERSION})"
            )
        missing = [k for k in _INDEX_KEYS if k not in index]
        if missing:
            raise ValueError(f"{index_path}: missing keys {missing}")
        if index["definition"] not in DEFINITIONS:
            raise ValueError(f"{index_path}: definition must be 1 or 2, got {index['definition']!r}")
        self.index = index
        self.definition = int(index["definition"])
        self.pyramid = latent_pyramid(index["resampler"], index["factors"], int(index["num_stages"]))
        shapes = self.pyramid.shapes((1, *index["latent_shape"]))
        expected = {
            "latents": list(index["latent_shape"]),
            "context": [index["text_len"], index["text_dim"]],
            "context_len": [],
        }
        if self.definition == 2:
            expected.update({f"stage{i}": list(s[1:]) for i, s in enumerate(shapes) if i > 0})
        absent = [name for name in index["shards"] if not (self.path / name).is_file()]
        if absent:
            raise FileNotFoundError(f"{self.path}: missing shard files {absent} listed in {INDEX_FILE}")
        self._sizes = []
        for name in index["shards"]:
            with safe_open(str(self.path / name), framework="pt") as f:
                keys = set(f.keys())
                if not set(expected) <= keys:
                    raise ValueError(f"{self.path / name}: missing tensors {sorted(set(expected) - keys)}")
                n = f.get_slice("latents").get_shape()[0]
                for k, rest in expected.items():
                    got = list(f.get_slice(k).get_shape())
                    if got != [n, *rest]:
                        raise ValueError(
                            f"{self.path / name}: tensor {k!r} has shape {got}, the index says {[n, *rest]}"
                        )
            self._sizes.append(n)
        if sum(self._sizes) != index["num_samples"]:
            raise ValueError(
                f"{self.path}: shards hold {sum(self._sizes)} samples, the index says {index['num_samples']}"
            )
        self._starts = [sum(self._sizes[:k]) for k in range(len(self._sizes))]
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    @property
    def num_stages(self) -> int:
        return int(self.index["num_stages"])

    def _handle(self, k: int):
        from safetensors import safe_open

        if self._pid != os.getpid():  # forked into a DataLoader worker: reopen
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.path / self.index["shards"][k]), framework="pt")
        return self._handles[k]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a cache of {n} samples")
        i %= n
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def __getitem__(self, i: int) -> dict:
        k, j = self._locate(int(i))
        f = self._handle(k)

        def row(name):
            return f.get_slice(name)[j : j + 1][0]

        latents = row("latents")
        if self.definition == 1:
            x0s = clean_pyramid_latent(latents, self.pyramid)
        else:
            x0s = [latents] + [row(f"stage{s}") for s in range(1, self.num_stages)]
        return {"x0s": x0s, "context": row("context"), "context_len": int(row("context_len"))}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyrflow-cache",
        description="Encode a folder of captioned videos into a latent cache for pyramidal training.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--data", required=True, help="folder of videos")
    p.add_argument(
        "--captions", default="captions.csv", help="caption file (.csv video,caption or .jsonl), relative to --data"
    )
    p.add_argument("--model-dir", required=True, help="Wan2.1 model directory (diffusers or original layout)")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--frames", type=int, default=81, help="frames per clip (4k + 1)")
    p.add_argument("--height", type=int, default=448, help="pixels")
    p.add_argument("--width", type=int, default=832, help="pixels")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate the clips are sampled at")
    p.add_argument("--seed", type=int, default=None, help="random clip starts with this seed (default: start at 0)")
    p.add_argument("--definition", type=int, choices=DEFINITIONS, default=1, help="forward-process definition")
    p.add_argument("--num-stages", type=int, default=3, help="pyramid stages cached per clip")
    p.add_argument("--resampler", choices=TRANSITION_FAMILIES, default="haar", help="resampler family")
    p.add_argument(
        "--factors", type=int, nargs=3, default=(2, 2, 2), metavar=("T", "H", "W"), help="per-transition factors"
    )
    p.add_argument("--shard-size", type=int, default=64, help="clips per shard file")
    p.add_argument("--batch-size", type=int, default=1, help="clips encoded together")
    p.add_argument("--num-workers", type=int, default=0, help="video-decoding worker processes")
    p.add_argument("--device", default="cpu", help="where the text encoder and VAE run")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="text encoder dtype")
    p.add_argument("--text-len", type=int, default=512, help="prompt length in tokens")
    p.add_argument("--allow-outside-root", action="store_true", help="accept caption paths that lead outside --data")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip videos whose frames have more pixels (width * height) than this as too_large "
        "(4096x2160; 0: no limit)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..pipeline import load_components
    from .dataset import VideoTextDataset

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_pixels < 0:
        parser.error(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = VideoTextDataset(
        args.data, args.captions, args.frames, args.height, args.width, args.fps, args.seed, args.allow_outside_root,
        max_pixels=args.max_pixels or None,
    )  # fmt: skip
    components = load_components(
        args.model_dir, device=args.device, transformer=False, text_len=args.text_len,
        text_encoder_dtype=getattr(torch, args.dtype), vae_dtype=torch.float32,
    )  # fmt: skip
    pyramid = latent_pyramid(args.resampler, args.factors, args.num_stages)
    index = write_cache(
        dataset, components, args.out, args.definition, pyramid, args.shard_size, not args.no_progress,
        batch_size=args.batch_size, num_workers=args.num_workers, overwrite=args.overwrite,
        source={"model_dir": str(args.model_dir)},
    )  # fmt: skip
    skipped = index["skipped"]
    total = sum(skipped.values())
    why = (" (" + ", ".join(f"{k}: {v}" for k, v in skipped.items()) + ")") if total else ""
    print(
        f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {args.out}; "
        f"skipped {total} videos{why}"
    )
    for path, reason in index["source"]["skipped_videos"]:
        print(f"  skipped {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
