"""Launch helpers of the CLI tests: ``torchrun`` runs, and sample CLI arguments.

``run_torchrun(*args)`` runs ``python -m torch.distributed.run --standalone --nproc_per_node 2 *args``.
``torchrun`` writes the config next to the run (``<tmp_path>/<output dir name>.json``), runs
``python -m torch.distributed.run --standalone --nproc_per_node 2 -m <module> --config <path>``
from the repository root with one OpenMP thread per process, and asserts it exits 0 (showing the
tail of its stderr otherwise). ``sample_args`` are the ``pyrflow_fast.sample`` arguments of a
17 x 64 x 64 video without a progress bar.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["REPO", "run_torchrun", "sample_args", "torchrun"]

REPO = Path(__file__).resolve().parents[2]


def run_torchrun(*args: str, nproc: int = 2, timeout: float = 180) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node nproc *args`` from the repository root,
    one OpenMP thread per process; asserts it exits 0 (showing the tail of its stderr otherwise)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def torchrun(module: str, cfg, tmp_path: Path, *extra: str) -> None:
    """Run the CLI ``module`` (``pyrflow_fast.train`` or ``pyrflow_fast.distill``) on ``cfg`` in 2 gloo processes."""
    path = tmp_path / f"{Path(cfg.train.output_dir).name}.json"
    path.write_text(cfg.to_json())
    run_torchrun("-m", module, "--config", str(path), *extra)


def sample_args(model_dir: Path, prompt: str, out: Path, *extra: str) -> list[str]:
    """``pyrflow_fast.sample`` arguments: ``prompt`` from ``model_dir`` to ``out``, 17 x 64 x 64, no progress bar."""
    return [
        "--model-dir",
        str(model_dir),
        "--prompt",
        prompt,
        "--out",
        str(out),
        "--frames",
        "17",
        "--height",
        "64",
        "--width",
        "64",
        "--no-progress",
        *extra,
    ]
