"""Options of the shapes dataset (object size and speed ranges, frame count) that leave the shipped data unchanged."""

import csv

import numpy as np
import pytest

from pyrflow_fast.shapes import data as D
from pyrflow_fast.shapes.analyze import analyze


def test_defaults_draw_the_shipped_videos():
    for i in range(10):
        assert D.draw(0, i) == D.draw(0, i, size_range=D.SIZE_RANGE, speed_range=D.SPEED_RANGE)
    v = D.draw(0, 3)
    assert np.array_equal(D.render(v, 1), D.render(v)[:, :1])


def test_size_and_speed_ranges_are_honoured_and_objects_stay_inside():
    videos = [D.draw(2, i, size_range=(14.0, 18.0), speed_range=(1.0, 1.5)) for i in range(200)]
    assert all(14.0 <= v.size <= 18.0 and 1.0 <= v.speed <= 1.5 for v in videos)
    assert max(v.size for v in videos) > 17.5 and min(v.size for v in videos) < 14.5
    for v in videos:
        dx, dy = D.DIRECTIONS[v.direction]
        for f in (0, D.FRAMES - 1):
            cx, cy = v.start[0] + dx * v.speed * f, v.start[1] + dy * v.speed * f
            r = v.size / 2
            assert r <= cx <= D.SIZE - r and r <= cy <= D.SIZE - r, (v, f)
    for v in videos[:12]:  # the analyzers read the larger objects exactly as the shipped ones
        found = analyze(D.render(v))
        assert (found.color, found.shape, found.direction) == (v.color, v.shape, v.direction), v


@pytest.mark.parametrize(
    ("size", "speed", "match"),
    [((14.0, 18.0), (1.0, 2.0), "needs 35 pixels"), ((12.0, 8.0), (1.0, 1.5), "size_range"),
     ((8.0, 12.0), (2.0, 1.0), "speed_range")],
)  # fmt: skip
def test_ranges_that_cannot_fit_are_refused(size, speed, match):
    with pytest.raises(ValueError, match=match):
        D.draw(0, 0, size_range=size, speed_range=speed)


def test_cli_writes_the_chosen_sizes_and_refuses_impossible_ones(tmp_path, capsys):
    assert D.main(["--out", str(tmp_path), "--num", "3", "--size-range", "15", "16", "--speed-range", "1", "1.2",
                   "--no-progress"]) == 0  # fmt: skip
    with open(tmp_path / "captions.csv") as fh:
        rows = list(csv.DictReader(fh))
    want = [D.draw(0, i, size_range=(15.0, 16.0), speed_range=(1.0, 1.2)).prompt for i in range(3)]
    assert [r["caption"] for r in rows] == want
    with pytest.raises(SystemExit):
        D.main(["--out", str(tmp_path / "x"), "--num", "3", "--size-range", "20", "24"])
    assert "lower size_range or speed_range" in capsys.readouterr().err
