"""The MP4 writer (pyrflow_ref.media.write_mp4): same frames, same bytes; readable by the project's reader."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrflow_fast.data import probe_video, read_video
from pyrflow_ref.media import to_uint8, write_mp4, write_video

pytest.importorskip("av")

FPS = 16

_CHILD = """
import os, sys
from pathlib import Path
import numpy as np
os.sched_setaffinity(0, {int(sys.argv[2])})
from pyrflow_ref.media import write_mp4
write_mp4(np.load(sys.argv[1]), Path(sys.argv[3]), 4, 16)
"""


def moving_frames(n=24, height=64, width=96):
    """Moving content (gradients and a square; values stay below 256 for n <= 24), easy on a lossy codec."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    for k in range(n):
        out[k, ..., 0] = xx + 4 * k
        out[k, ..., 1] = yy * 2 + 2 * k
        out[k, ..., 2] = 90
        x = (3 * k) % (width - 12)
        out[k, 10:22, x : x + 12] = (250, 240, 20)
    return out


def mvhd_times(data: bytes) -> tuple[int, int]:
    """``(creation_time, modification_time)`` of the movie header box."""
    at = data.index(b"mvhd") + 4
    version = data[at]
    fmt = ">QQ" if version == 1 else ">II"
    return struct.unpack_from(fmt, data, at + 4)


def test_same_frames_same_bytes(tmp_path):
    """What was checked: three writes in this process, and writes from child processes pinned to one
    CPU (with OMP_NUM_THREADS=1 and =7), give identical bytes. The writer before this fix let x264
    pick its threads from the usable CPUs (slice threads, one slice per thread): on a 2-CPU machine
    a process pinned to one CPU wrote threads=1 and an unpinned one threads=2, different bytes."""
    frames = moving_frames()  # x4: 256x384, 16 macroblock rows, enough for x264 to slice-thread
    paths = [tmp_path / f"in-process-{k}.mp4" for k in range(3)]
    for p in paths:
        assert write_mp4(frames, p, 4, FPS)
    want = paths[0].read_bytes()
    assert all(p.read_bytes() == want for p in paths[1:])
    assert b"threads=1 lookahead_threads=1 sliced_threads=0" in want  # x264's option string
    assert b"Lavf" not in want  # bit-exact muxing: no library version string
    assert mvhd_times(want) == (0, 0)  # no creation / modification time

    np.save(tmp_path / "frames.npy", frames)
    cpus = sorted(os.sched_getaffinity(0))
    root = Path(__file__).resolve().parents[2]
    for k, (cpu, omp) in enumerate([(cpus[0], "1"), (cpus[-1], "7")]):
        out = tmp_path / f"child-{k}.mp4"
        env = {**os.environ, "OMP_NUM_THREADS": omp, "PYTHONPATH": str(root)}
        subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "frames.npy"), str(cpu), str(out)],
            check=True,
            env=env,
            timeout=120,
        )
        assert out.read_bytes() == want, f"{out} (pinned to CPU {cpu}, OMP_NUM_THREADS={omp}) differs"


def test_written_mp4_reads_back(tmp_path):
    frames = moving_frames(n=20, height=48, width=64)
    video = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), np.float32) / 127.5 - 1  # (3, F, H, W)
    path = write_video(to_uint8(video), tmp_path / "sample.mp4", scale=1, fps=FPS)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (64, 48, FPS, 20)
    assert info.duration == pytest.approx(20 / FPS)
    got = read_video(path, 20, 48, 64, FPS)  # every frame, at its own size: no resampling
    want = torch.from_numpy(video)
    err = (got - want).abs()
    # lossy H.264 (crf 23, 4:2:0 chroma): small on average, and every frame is the right one
    assert float(err.mean()) < 0.03, float(err.mean())
    per_frame = [[float((got[:, i] - want[:, j]).abs().mean()) for j in range(20)] for i in range(20)]
    assert [int(np.argmin(row)) for row in per_frame] == list(range(20))
