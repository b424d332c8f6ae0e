"""Sharded (DCP) training checkpoints: asynchronous saves, and resuming at another world size (gloo, torchrun).

What is exact and why. A checkpoint holds every rank's shards; DCP reassembles them for any other
sharding, so the state a resumed run starts from (parameters, AdamW moments and step counts, EMA,
LR schedules, the data position) is *bit-exact* whatever the two world sizes: the 2 -> 1 test
compares the loaded parameters with ``torch.equal``. The draws of every sample depend on (seed,
step, global slot) only, so with the same global batch (``samples_per_stage`` 2 in one process, 1
in each of two) both runs see the same samples; the training steps after the resume differ only in
the order of floating-point reductions (FSDP's reduce-scatter over two ranks sums the per-rank
gradients, one process sums all samples at once), hence ``rtol = 1e-5`` on the losses and
``rtol = 1e-4, atol = 1e-5`` on the final weights, the tolerances of the 1-vs-2-process tests of
``test_train_dist``.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from checkpoint_fixtures import losses, resume_run, weights
from launch_fixtures import torchrun

from pyrflow_fast.train.checkpoint import latest_checkpoint
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.wan.checkpoint import load_wan
from pyrflow_fast.wan.keys import to_diffusers_state_dict

LOSS_RTOL = 1e-5


def config(out, **train):
    return resume_run(out, ema={"export": False}, **train)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, 4 steps, checkpoints at 2 and 4, the raw weights exported."""
    out = tmp_path_factory.mktemp("single") / "run"
    Runner(config(out)).fit()
    return out


def test_async_save_writes_the_same_resumable_checkpoints(single, tmp_path):
    """The step-2 shards are written while steps 3 and 4 train: resuming from them proves they were staged."""
    out = tmp_path / "async"
    cfg = config(out)
    cfg.checkpoint.async_save = True
    Runner(cfg).fit()
    assert latest_checkpoint(out).name == "step_0000004"  # finalised at the end of the run
    a, b = weights(single), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    Runner(cfg).fit(resume=True)
    assert losses(out) == losses(single)
    b = weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_fsdp_checkpoint_resumes_in_one_process(single, tmp_path):
    two = tmp_path / "two"
    torchrun("pyrflow_fast.train", config(two, samples_per_stage=1, parallel="fsdp", steps=2), tmp_path)
    saved = weights(two)  # the raw weights at step 2, gathered by the export
    runner = Runner(config(two))
    runner.load_checkpoint(latest_checkpoint(two))
    for name, p in runner.method.net.named_parameters():
        assert torch.equal(p.detach(), saved[name.removeprefix("backbone.model.")]), name
    assert runner.step == 2 and runner.method.data_pos == 2 * 6
    Runner(config(two)).fit(resume=True)
    np.testing.assert_allclose(losses(two), losses(single), rtol=LOSS_RTOL)
    a, b = weights(single), weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_in_two_fsdp_processes(single, tmp_path):
    one = tmp_path / "one"
    Runner(config(one, steps=2)).fit()
    torchrun("pyrflow_fast.train", config(one, samples_per_stage=1, parallel="fsdp"), tmp_path, "--resume")
    np.testing.assert_allclose(losses(one), losses(single), rtol=LOSS_RTOL)
    a, b = weights(single), weights(one)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_large_exports_are_sharded_safetensors_with_an_index_diffusers_loads(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = config(tmp_path / "run", steps=1)
    cfg.checkpoint.export_layout, cfg.checkpoint.export_max_shard_size = "diffusers", "20KB"
    Runner(cfg).fit()
    folder = tmp_path / "run" / "export" / "transformer"
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((folder / s).is_file() for s in shards)
    theirs = diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "run" / "export"), subfolder="transformer")
    ours = load_wan(tmp_path / "run" / "export")
    mine = to_diffusers_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, mine[key]), key
