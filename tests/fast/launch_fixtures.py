"""Launch helpers of the CLI tests: a two-process ``torchrun`` of a training CLI, and sample CLI arguments.

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

__all__ = ["REPO", "sample_args", "torchrun"]

REPO = Path(__file__).resolve().parents[2]


def torchrun(module: str, cfg, tmp_path: Path, *extra: str) -> None:
    """Run the CLI ``module`` (``pyrflow_fast.train`` or ``pyrflow_fast.distill``) on ``cfg`` in 2 gloo processes."""
    path = tmp_path / f"{Path(cfg.train.output_dir).name}.json"
    path.write_text(cfg.to_json())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        module,
        "--config",
        str(path),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]


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
