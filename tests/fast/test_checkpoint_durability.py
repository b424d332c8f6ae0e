"""Durable training checkpoints: fsync before renames, the manifest, fallbacks, disk full, retention, safe loads.

Every run is the tiny synthetic finetune of ``test_train.tiny_cfg`` (one process, a few seconds).
"""

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from checkpoint_fixtures import losses, reseal
from torch.distributed.checkpoint.api import CheckpointException

import pyrflow_fast.train.checkpoint as ck
from pyrflow_fast.train.checkpoint import CheckpointWarning, CheckpointWriteError, latest_checkpoint, trim_metrics
from pyrflow_fast.train.config import synthetic_run
from pyrflow_fast.train.runner import Runner


def cfg(out, steps=4, every=2, keep_last=2):
    return synthetic_run(
        out,
        data={"synthetic_samples": 8},
        optim={"lr": 1e-3, "warmup_steps": 1},
        ema={"decay": 0.9},
        train={"steps": steps, "samples_per_stage": 1, "precision": "auto"},
        checkpoint={"every": every, "keep_last": keep_last, "export": False},
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 4-step run (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    Runner(cfg(out)).fit()
    return out


def _truncate_shard(path: Path) -> None:
    shard = next((path / "state").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate_shard, "truncated or torn"),
        (lambda p: (p / "COMPLETE").unlink(), "no COMPLETE marker"),
        (lambda p: (p / "meta.json").unlink(), "meta.json is missing"),
    ],
    ids=["truncated-shard", "no-marker", "missing-file"],
)
def test_torn_latest_checkpoint_warns_and_resumes_from_the_previous_one(straight, tmp_path, damage, problem):
    out = tmp_path / "run"
    Runner(cfg(out, keep_last=3)).fit()
    damage(out / "checkpoints" / "step_0000004")
    with pytest.warns(CheckpointWarning, match=rf"step_0000004: .*{problem}"):
        assert latest_checkpoint(out).name == "step_0000002"
    with pytest.warns(CheckpointWarning, match="step_0000004"):
        hist = Runner(cfg(out, keep_last=3)).fit(resume=True)
    assert [m["step"] for m in hist] == [3, 4]
    assert losses(out) == losses(straight)  # bit-exact from the previous complete checkpoint


def test_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    with pytest.warns(CheckpointWarning, match=rf"{path}: dropped the torn last line 4"):
        trim_metrics(path, 2)
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not JSON"):
        trim_metrics(path, 2)


def test_disk_full_is_a_clear_error_naming_the_path_and_removes_the_temp_folder(straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    Runner(cfg(out, steps=2)).fit()

    def full(item, stream, *args, **kwargs):  # the first bytes land, then the disk is full
        stream.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr("torch.distributed.checkpoint.filesystem._write_item", full)
        with pytest.raises(CheckpointWriteError, match=r"\.tmp-step_0000004 failed: no space left on device") as err:
            Runner(cfg(out)).fit(resume=True)
    assert err.value.errno == errno.ENOSPC
    assert "step_0000002 is intact" in str(err.value)
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert latest_checkpoint(out).name == "step_0000002"
    Runner(cfg(out)).fit(resume=True)  # space freed: the run continues where the full disk stopped it
    assert losses(out) == losses(straight)


def test_keep_last_retains_the_newest_complete_checkpoints(tmp_path):
    out = tmp_path / "run"
    Runner(cfg(out, steps=5, every=1, keep_last=2)).fit()
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000004", "step_0000005"]
    assert (root / "latest").read_text() == "step_0000005\n"
    assert ck.complete_checkpoints(root) == [root / "step_0000004", root / "step_0000005"]


def test_every_file_is_fsynced_before_the_folder_is_moved_into_place(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    out = tmp_path / "run"
    Runner(cfg(out, steps=1, every=1)).fit()
    root = (out / "checkpoints").resolve()
    tmp, final = root / ".tmp-step_0000001", root / "step_0000001"
    move = events.index(("replace", str(tmp), str(final)))
    synced = {e[1] for e in events[:move] if e[0] == "fsync"}
    for f in (p for p in final.rglob("*") if p.is_file()):
        rel = tmp / f.relative_to(final)
        # written in place, or through a temporary name that was synced and renamed
        assert {str(rel), str(rel.with_name(f".{rel.name}.tmp")), str(rel) + ".tmp"} & synced, rel
    assert {str(tmp), str(tmp / "state")} <= synced  # the folders' entries
    after = [e for e in events[move + 1 :] if e[0] == "fsync"]
    assert after[0] == ("fsync", str(root))  # the rename itself, before the latest pointer
    assert events[-1] == ("fsync", str(root))  # the latest pointer's rename


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_dcp_metadata_with_a_pickle_payload_is_refused(tmp_path):
    out = tmp_path / "run"
    Runner(cfg(out, steps=2)).fit()
    path = latest_checkpoint(out)
    marker = tmp_path / "pwned"
    (path / "state" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    reseal(path)
    with pytest.raises(
        pickle.UnpicklingError, match=r"step_0000002: unsafe content refused: .*\.metadata: .*Path\.touch"
    ):
        Runner(cfg(out)).fit(resume=True)
    assert not marker.exists()


def test_dcp_non_tensor_entries_load_with_weights_only(tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):
        dcp.save({"x": torch.ones(2), "obj": _Payload(str(marker))}, checkpoint_id=str(tmp_path / "d"))
    target = {"x": torch.zeros(2), "obj": None}
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):
        with pytest.raises(CheckpointException) as err:
            dcp.load(target, storage_reader=ck.SafeFileSystemReader(tmp_path / "d"), planner=ck.SafeLoadPlanner())
    assert "Weights only load failed" in str(next(iter(err.value.failures.values()))[0])
    assert not marker.exists()
