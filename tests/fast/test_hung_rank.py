"""A stalled rank ends a data-parallel run within ``train.collective_timeout`` with an error naming the field.

Two gloo ranks of ``pyrflow-train`` are started by hand (the environment torchrun would set), so the
test controls each process: once rank 0 has logged a step, rank 1 is frozen with SIGSTOP. Rank 0's
next gradient all-reduce then waits for a peer that never answers; with a 3 s timeout it must exit
non-zero well before the 10-minute default, saying which field to raise. The frozen rank is killed
in the cleanup (a stopped process ignores everything but SIGKILL and SIGCONT).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from launch_fixtures import REPO

from pyrflow_fast.train.config import TrainConfig

TIMEOUT_S = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_stalled_rank_ends_the_run_with_the_timeout_named(tmp_path):
    cfg = TrainConfig.from_dict(
        {
            "model": {"config": "tiny"},
            "data": {"kind": "synthetic", "synthetic_samples": 16},
            "optim": {"warmup_steps": 1},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "steps": 100000,
                "samples_per_stage": 1,
                "progress": False,
                "device": "cpu",
                "parallel": "ddp",
                "gradient_checkpointing": False,
                "collective_timeout": TIMEOUT_S,
            },
            "checkpoint": {"every": 100000, "export": False},
        }
    )
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "pyrflow_fast.train", "--config", str(path)]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**env, "RANK": str(rank), "LOCAL_RANK": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
            assert procs[0].poll() is None, procs[0].stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the two ranks did not complete a step in 120 s"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=TIMEOUT_S + 60)
        waited = time.monotonic() - stopped
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert procs[0].returncode != 0
    assert f"a collective did not complete within train.collective_timeout = {TIMEOUT_S} s" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert waited < TIMEOUT_S + 30  # the timeout, a step in flight and the exit; not the 600 s default
    assert json.loads(metrics.read_text().splitlines()[0])["step"] == 1
