"""The README's main job (for now: pyramidal sampling of the analytic Gaussian video)."""

import subprocess
import sys

import numpy as np
from PIL import Image

from pyrflow_ref.demo import main


def test_demo_writes_video_and_strip(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--frames", "8", "--size", "16", "--schedule", "2-2-1", "--scale", "1"]) == 0
    with Image.open(tmp_path / "sample.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (16, 16)
    strip = np.asarray(Image.open(tmp_path / "stages.png"))
    assert strip.shape == (3 * 16, 8 * 16, 3)
    assert strip.std() > 5  # an image, not a constant
    assert (tmp_path / "sample.mp4").stat().st_size > 0
    assert "schedule 2-2-1" in capsys.readouterr().out


def test_demo_is_deterministic(tmp_path):
    args = ["--frames", "4", "--size", "8", "--schedule", "0-1-1", "--scale", "1"]
    main(["--out", str(tmp_path / "a"), *args])
    main(["--out", str(tmp_path / "b"), *args])
    a, b = (np.asarray(Image.open(tmp_path / d / "stages.png")) for d in "ab")
    np.testing.assert_array_equal(a, b)


def test_demo_cli_rejects_bad_schedule(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pyrflow_ref.demo", "--out", str(tmp_path), "--schedule", "2-2"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "error: schedule '2-2' has 2 stages, expected 3" in run.stderr
