"""Training checkpoints: sharded (DCP), durable, resumable at another world size (:class:`CheckpointManager`).

A checkpoint ``<output_dir>/checkpoints/step_<7-digit step>`` holds

- ``state/``: a :mod:`torch.distributed.checkpoint` (DCP) folder with the trained parameters,
  optimizer states and EMA of every role, the LR schedules and the method's own state. Every
  rank writes its own shards (``__<rank>_0.distcp``; FSDP2 DTensors are written shard by shard,
  replicated tensors once), the coordinator the ``.metadata`` index. It loads at any world size
  (DCP reshards), so a run saved by 2 processes resumes in 1 and the other way round.
- ``meta.json``: step, world size and the config (checked before any tensor is read).
- ``rng_rank<r>.pt``: each rank's global RNG states (restored when the rank exists in the run).
- ``COMPLETE``: the manifest, written last: every file of the checkpoint with its size.

**Durability.** Everything is written into ``.tmp-step_...``; every file is fsynced (DCP's
``sync_files``), then the folders, then ``COMPLETE``, and only then the folder is moved into place
with ``os.replace`` and the parent folder fsynced; the ``latest`` pointer is replaced the same
way. A checkpoint counts only when its manifest matches the files on disk
(:func:`checkpoint_problem`): :func:`latest_checkpoint` warns (:class:`CheckpointWarning`) about a
torn or truncated newer one and returns the newest complete one. A write that fails (disk full,
``ENOSPC``) removes the temporary folder and raises :class:`CheckpointWriteError` naming it; the
previous checkpoint stays. Only the ``keep_last`` newest are kept.

**No pickled code runs on resume.** The RNG files load with ``weights_only=True``. DCP itself
unpickles its ``.metadata`` with plain :func:`pickle.load` and its non-tensor entries with
an unrestricted ``torch.load`` (torch 2.13, ``FileSystemReader.read_metadata`` and
``DefaultLoadPlanner.load_bytes``); here the metadata goes through
:class:`~pyrflow_fast.train.safe_dcp.MetadataUnpickler`,
which resolves only DCP's own metadata classes, ``torch.Size``, dtypes and paths, and the
non-tensor entries load with ``weights_only=True`` (:class:`SafeLoadPlanner`). The tensor data
DCP reads with ``weights_only=True`` already.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from ..wan.checkpoint import load_torch_file
from .distributed import Distributed
from .safe_dcp import SafeFileSystemReader, SafeLoadPlanner

__all__ = [
    "CKPT_SLEEP_ENV",
    "MANIFEST",
    "CheckpointManager",
    "CheckpointWarning",
    "CheckpointWriteError",
    "ConfigMismatchError",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "atomic_write_text",
    "checkpoint_problem",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_model_state",
    "load_optimizer_state",
    "model_state",
    "optimizer_state",
    "trim_metrics",
]

CKPT_SLEEP_ENV = "PYRFLOW_TRAIN_CKPT_SLEEP"
"""Testing hook: ``"STEP:SECONDS"`` makes rank 0 sleep between writing the temporary checkpoint of
``STEP`` and moving it into place (to kill a run mid-write)."""

MANIFEST = "COMPLETE"
"""The completion marker and manifest of a checkpoint (``{"name": ..., "files": {path: bytes}}``)."""


class ConfigMismatchError(ValueError):
    """The config, the checkpoint and the data do not describe the same model."""


class CheckpointWarning(UserWarning):
    """A checkpoint or the metrics file was damaged and skipped or repaired."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. the disk is full); its temporary folder was removed."""


# ----------------------------------------------------------------------------- durable files
def _fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file, ``os.replace`` and a synced folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _save_synced(obj: Any, path: Path) -> None:
    """``torch.save`` into ``path`` and fsync it."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def trim_metrics(path: Path, step: int) -> None:
    """Drop the lines of a JSONL metrics file past ``step`` (a resumed run rewrites them).

    A torn last line (a run killed mid-write) is dropped with a :class:`CheckpointWarning`; an
    unreadable line before it is a ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for n, ln in enumerate(lines, start=1):
        try:
            record = json.loads(ln)
        except json.JSONDecodeError as err:
            if n < len(lines):
                raise ValueError(f"{path}: line {n} is not JSON ({err}); fix or remove it to resume") from err
            warnings.warn(f"{path}: dropped the torn last line {n} ({ln[:60]!r})", CheckpointWarning, stacklevel=2)
            continue
        if record["step"] <= step:
            kept.append(ln)
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


# ---------------------------------------------------------------------------- completeness
def _manifest(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be resumed (no or unreadable manifest, a file missing or
    of another size than written), or ``None`` when it is complete."""
    marker = Path(path) / MANIFEST
    if not marker.is_file():
        return f"it has no {MANIFEST} marker (the write did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"its {MANIFEST} manifest is unreadable ({err})"
    for name, size in files.items():
        f = Path(path) / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written (truncated or torn)"
    return None


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete ``step_*`` checkpoints under ``root``, oldest first."""
    return [p for p in sorted(Path(root).glob("step_*")) if p.is_dir() and checkpoint_problem(p) is None]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run in ``output_dir`` (``None`` when there is none).

    Newer ``step_*`` folders that are torn or truncated are skipped with a :class:`CheckpointWarning`
    naming them. The ``latest`` pointer is informative only (it lags a checkpoint moved into place
    just before a kill)."""
    root = Path(output_dir) / "checkpoints"
    for path in sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", CheckpointWarning, stacklevel=2)
    return None


# ------------------------------------------------------------------------- RNG of every rank
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cause(err: BaseException) -> BaseException:
    """The exception a rank raised inside DCP (DCP gathers them into a :class:`CheckpointException`)."""
    while isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    return err


_SINGLE_PROCESS_WARNING = "torch.distributed is disabled"


@contextlib.contextmanager
def _single_process_quiet(dist: Distributed):
    """DCP warns on every single-process save and load; that is the intended mode here."""
    with warnings.catch_warnings():
        if dist.world == 1:
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
        yield


# ------------------------------------------------------------- state dicts (this rank's shards)
def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, ignore_frozen_params=True, strict=strict)


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters (and buffers) of ``module`` as this rank holds them (FSDP2: DTensor shards;
    frozen parameters left out: a resumed run rebuilds them from ``model.path``)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options())


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer``'s state keyed by the parameter names in ``module`` (this rank's shards; before the
    first step the state is initialised by a zero-rate step, so it can be a load target)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options())


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`model_state` back into ``module`` (its frozen parameters are not in it: not strict; the
    keys were checked when DCP filled ``state``, a :func:`model_state` of this run)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options(strict=False))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an :func:`optimizer_state` into ``optimizer`` over ``module``'s parameters."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options())


# ----------------------------------------------------------------------------- the manager
class CheckpointManager:
    """Writes and reads the checkpoints under ``root`` (``<output_dir>/checkpoints``; see the module docstring).

    :param keep_last: how many of the newest checkpoints survive a save.
    :param async_save: write the DCP shards in a background thread (:func:`torch.distributed.checkpoint.async_save`,
        over a separate gloo group so it never interleaves with training collectives); the checkpoint is
        finalised (manifest, rename, ``latest``) at the next :meth:`save` or :meth:`finish`.
    """

    def __init__(self, root: Path, dist: Distributed, keep_last: int, async_save: bool = False) -> None:
        self.root = Path(root)
        self.dist = dist
        self.keep_last = keep_last
        self.async_save = async_save
        self._pending: tuple[int, Path, dict[str, Any], Any] | None = None
        self._group = tdist.new_group(backend="gloo") if async_save and dist.world > 1 else None
        if async_save and dist.world == 1:  # DCP warns in its writer thread, where no catch_warnings reaches
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)

    # ---------------------------------------------------------------------------- saving
    def save(self, step: int, meta: dict[str, Any], state: dict[str, Any]) -> Path:
        """Write ``state`` (tensors, DTensor shards and small Python values of every rank), ``meta``
        (JSON, rank 0's) and every rank's RNG as the checkpoint of ``step`` and point ``latest`` at it.
        Every rank calls it. With ``async_save`` the shards are still being written when it returns."""
        self.finish()
        name = f"step_{step:07d}"
        tmp = self.root / f".tmp-{name}"
        error = None
        if self.dist.rank == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                for stale in self.root.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp.mkdir()
            except OSError as err:
                error = err
        self._check(error, tmp)  # also the barrier: the folder exists for every rank
        future = None
        try:
            _save_synced(_rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
            future = self._write_shards(state, tmp / "state")
        except (Exception, CheckpointException) as err:  # reported on every rank below
            error = _cause(err)
        self._check(error, tmp)
        if future is not None:
            self._pending = (step, tmp, meta, future)
            return self.root / name
        return self._finalise(step, tmp, meta)

    def finish(self) -> Path | None:
        """Wait for a pending asynchronous save and finalise it (every rank calls it); its path or ``None``."""
        if self._pending is None:
            return None
        step, tmp, meta, future = self._pending
        self._pending = None
        error = None
        try:
            future.result()
        except (Exception, CheckpointException) as err:
            error = _cause(err)
        self._check(error, tmp)
        return self._finalise(step, tmp, meta)

    def _write_shards(self, state: dict[str, Any], folder: Path):
        import torch.distributed.checkpoint as dcp

        writer = FileSystemWriter(folder, sync_files=True, thread_count=1)
        with _single_process_quiet(self.dist):
            if self.async_save:
                return dcp.async_save(state, storage_writer=writer, process_group=self._group)
            dcp.save(state, storage_writer=writer)
        return None

    def _check(self, error: BaseException | None, tmp: Path) -> None:
        """Raise :class:`CheckpointWriteError` on every rank when any rank failed (its temporary folder removed)."""
        failed = error is not None
        if self.dist.world > 1:
            flag = torch.tensor([float(failed)], device=self.dist.device)
            tdist.all_reduce(flag)
            failed = bool(flag.item())
        if not failed:
            return
        self.dist.barrier()
        if self.dist.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(self.root) if self.root.is_dir() else []
        keep = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        cause = error if error is not None else "another rank failed"
        code = getattr(error, "errno", None) or errno.EIO
        if code == errno.ENOSPC:
            cause = f"no space left on device ({error})"
        raise CheckpointWriteError(
            code,
            f"writing checkpoint {tmp} failed: {cause}; removed the temporary folder, {keep}. "
            f"Free space under {self.root} or lower checkpoint.keep_last",
        ) from error

    def _finalise(self, step: int, tmp: Path, meta: dict[str, Any]) -> Path:
        """Rank 0: ``meta.json``, the manifest, fsync, rename, ``latest``, retention; every rank waits."""
        name = f"step_{step:07d}"
        final = self.root / name
        error = None
        if self.dist.rank == 0:
            try:
                atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
                for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                    _fsync_dir(folder)
                atomic_write_text(tmp / MANIFEST, json.dumps({"name": name, "files": _manifest(tmp)}, indent=1) + "\n")
                hook = os.environ.get(CKPT_SLEEP_ENV, "")
                if hook and int(hook.split(":")[0]) == step:
                    print(f"{CKPT_SLEEP_ENV}: sleeping before moving {tmp} into place", flush=True)
                    time.sleep(float(hook.split(":")[1]))
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(self.root)
                atomic_write_text(self.root / "latest", name + "\n")
            except OSError as err:
                error = err
        self._check(error, tmp)
        if self.dist.rank == 0:
            for old in sorted(p for p in self.root.glob("step_*") if p.is_dir())[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return final

    # --------------------------------------------------------------------------- loading
    def load(
        self, path: str | Path, state: dict[str, Any], config: Any, keys: tuple[tuple[str, str], ...]
    ) -> dict[str, Any]:
        """Read checkpoint ``path`` into ``state`` in place (the structure :meth:`save` was given, built by
        this run: DCP reshards to this world size) and restore this rank's RNG; returns its ``meta``.

        Raises :class:`ConfigMismatchError` when the config fields ``keys`` (``(section, field)``)
        differ from the ones it was trained with, or the state does not have this run's entries."""
        import torch.distributed.checkpoint as dcp

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        saved = meta["config"]
        for section, key in keys:
            want = getattr(getattr(config, section), key)
            if saved[section][key] != want:
                raise ConfigMismatchError(
                    f"checkpoint {path} was trained with {section}.{key} = {saved[section][key]!r}, "
                    f"the config says {want!r}"
                )
        try:
            with _single_process_quiet(self.dist):
                dcp.load(state, storage_reader=SafeFileSystemReader(path / "state"), planner=SafeLoadPlanner())
        except (Exception, CheckpointException) as err:
            cause = _cause(err)
            text = str(cause)
            if "Missing key in checkpoint" in text:
                raise ConfigMismatchError(
                    f"checkpoint {path} does not hold what this run trains (another method, LoRA rank or EMA "
                    f"setting?): {text}"
                ) from err
            if isinstance(cause, pickle.UnpicklingError) or "refusing to load" in text:
                raise pickle.UnpicklingError(f"checkpoint {path}: unsafe content refused: {text}") from err
            raise RuntimeError(f"checkpoint {path} could not be loaded: {type(cause).__name__}: {text}") from err
        rng = path / f"rng_rank{self.dist.rank}.pt"
        if rng.is_file():
            _set_rng_state(load_torch_file(rng))  # weights_only; a payload is a CheckpointError naming the file
        return meta
