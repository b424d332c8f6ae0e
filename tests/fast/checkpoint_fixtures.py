"""Helpers of the checkpoint and resume tests: their common run, what a run logged and exported, a manifest rewrite.

``resume_run(out)`` is the synthetic run they compare. ``losses(out)`` is the logged loss column of
``out/metrics.jsonl``, ``weights(out)`` the exported ``out/export`` weights. ``reseal(path)`` writes
the ``COMPLETE`` manifest of checkpoint folder ``path`` for the files it now holds, as someone who
can write the folder (and wants a tampered file loaded) would.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyrflow_fast.train.checkpoint import MANIFEST
from pyrflow_fast.train.config import synthetic_run
from pyrflow_fast.wan.checkpoint import load_wan

__all__ = ["losses", "reseal", "resume_run", "weights"]


def resume_run(out: str | Path, ema: dict | None = None, **train):
    """The synthetic run the multi-process and resume tests compare: 4 steps of 2 samples per stage, EMA,
    checkpoints at steps 2 and 4; ``ema`` and ``train`` update those sections."""
    return synthetic_run(
        out,
        data={"synthetic_samples": 16},
        optim={"lr": 1e-3, "warmup_steps": 1},
        ema={"decay": 0.9, **(ema or {})},
        train={"steps": 4, "samples_per_stage": 2, "precision": "auto", **train},
        checkpoint={"every": 2},
    )


def losses(out: str | Path, key: str = "loss") -> list[float]:
    """The ``key`` column of every line of ``out/metrics.jsonl``."""
    return [json.loads(line)[key] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(out: str | Path) -> dict:
    """The exported transformer weights of run ``out`` (either export layout) under Wan's keys, as stored."""
    return load_wan(Path(out) / "export").state_dict()


def reseal(path: Path) -> None:
    """Rewrite ``path/COMPLETE`` to list the files of ``path`` with their current sizes."""
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (path / MANIFEST).write_text(json.dumps({"name": path.name, "files": files}) + "\n")
