"""Training checkpoints: one layout, atomic writes, resume (:class:`CheckpointManager`).

A checkpoint ``<output_dir>/checkpoints/step_<7-digit step>`` holds ``state.pt`` (written by rank
0: step, config, the trained parameters and optimizer state of every model of the method as
PyTorch distributed *full* state dicts, schedulers, EMA and the method's own state) and
``rng_rank<r>.pt`` (each rank's global RNG states). It is written into ``.tmp-step_...`` and
moved into place with ``os.replace``, then the ``latest`` pointer file is replaced the same way,
so a run killed while writing leaves the previous checkpoint loadable; only the ``keep_last``
newest are kept. Every file is read with ``weights_only=True`` (no pickled code runs on resume).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import Distributed

__all__ = [
    "CKPT_SLEEP_ENV",
    "CheckpointManager",
    "ConfigMismatchError",
    "atomic_write_text",
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


class ConfigMismatchError(ValueError):
    """The config, the checkpoint and the data do not describe the same model."""


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names (``None`` when there is none)."""
    root = Path(output_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which has no state.pt")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def trim_metrics(path: Path, step: int) -> None:
    """Drop the lines of a JSONL metrics file past ``step`` (a resumed run rewrites them)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


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


# ------------------------------------------------------- distributed state dicts (full, on rank 0)
def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters (and buffers) of ``module``, gathered to full CPU tensors on rank 0 (a
    collective under FSDP: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options())


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer``'s state keyed by the parameter names in ``module`` (full tensors on rank 0; a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options())


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`model_state` (every rank holds the full state; FSDP shards it)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options())


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an :func:`optimizer_state` into ``optimizer`` over ``module``'s parameters."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options())


class CheckpointManager:
    """Writes and reads the checkpoints under ``root`` (``<output_dir>/checkpoints``).

    :param keep_last: how many of the newest checkpoints survive a save.
    """

    def __init__(self, root: Path, dist: Distributed, keep_last: int) -> None:
        self.root = Path(root)
        self.dist = dist
        self.keep_last = keep_last

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (rank 0's; other ranks pass what they hold) and every rank's RNG as the
        checkpoint of ``step``, atomically, and point ``latest`` at it. Every rank calls it."""
        name = f"step_{step:07d}"
        tmp = self.root / f".tmp-{name}"
        rank0 = self.dist.rank == 0
        if rank0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.dist.barrier()
        torch.save(_rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        self.dist.barrier()
        if rank0:
            torch.save(state, tmp / "state.pt")
            (tmp / "COMPLETE").write_text(name + "\n")
            hook = os.environ.get(CKPT_SLEEP_ENV, "")
            if hook and int(hook.split(":")[0]) == step:
                print(f"{CKPT_SLEEP_ENV}: sleeping before moving {tmp} into place", flush=True)
                time.sleep(float(hook.split(":")[1]))
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(self.root / "latest", name + "\n")
            for old in sorted(p for p in self.root.glob("step_*") if p.is_dir())[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return self.root / name

    def load(self, path: str | Path, config: Any, keys: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        """Read checkpoint ``path`` and restore this rank's RNG; raise :class:`ConfigMismatchError` when
        the config fields ``keys`` (``(section, field)``) differ from the ones it was trained with."""
        path = Path(path)
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        for section, key in keys:
            want = getattr(getattr(config, section), key)
            if saved[section][key] != want:
                raise ConfigMismatchError(
                    f"checkpoint {path} was trained with {section}.{key} = {saved[section][key]!r}, "
                    f"the config says {want!r}"
                )
        rng = path / f"rng_rank{self.dist.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=True))
        return state
