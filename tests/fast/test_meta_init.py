"""Meta-device construction, FSDP2 sharding and shard-by-shard loading of the backbone.

The 14B model is built and sharded on the meta device under a fake process group of 8 ranks (no
memory, no communication): its parameter count and each rank's 1/8 share are what
``docs/finetune.md``'s memory table is computed from. Loading is checked as rank 1 of a fake group
of 2 (the rank with non-zero offsets; one rank per process, as in a real run: DTensor caches the
local shard layout per mesh): its shards are the rows of the saved tensors its slice names, read
from the safetensors file without loading the rest. An FSDP run with a teacher read shard by shard matches
one process (2 gloo processes, torchrun).
"""

import resource

import numpy as np
import pytest
import torch
import torch.distributed as dist
from checkpoint_fixtures import losses
from launch_fixtures import torchrun
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.testing._internal.distributed.fake_pg import FakeStore
from wan_fixtures import random_wan

from pyrflow_fast.train.checkpoint import ConfigMismatchError
from pyrflow_fast.train.config import synthetic_run
from pyrflow_fast.train.inputs import load_sharded_weights, meta_backbone
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.wan.checkpoint import read_state_dict, save_wan


@pytest.fixture
def fake_group(request):
    """A fake process group of ``request.param = (rank, world)``: collectives are no-ops."""
    rank, world = request.param
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    yield rank, world
    dist.destroy_process_group()


@pytest.mark.parametrize("fake_group", [(0, 8)], indirect=True)
def test_14b_builds_and_shards_on_meta_without_memory(fake_group):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = meta_backbone("wan2.1-t2v-14b", "")
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    local = sum(p.to_local().numel() for p in params)
    assert all(p.is_meta and hasattr(p, "device_mesh") for p in params)
    assert 14.2e9 < total < 14.4e9  # Wan2.1-T2V-14B: 14.29e9
    assert local == pytest.approx(total / 8, rel=1e-3)  # dim-0 shards; uneven rows round up
    assert grown_mb < 200  # 57 GB in float32 if it were allocated


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    save_wan(random_wan("tiny", seed=3, std=0.1), folder / "original")
    save_wan(random_wan("tiny", seed=3, std=0.1), folder / "diffusers", layout="diffusers")
    return folder


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("fake_group", [(1, 2)], indirect=True)  # rank 1: the non-zero offsets
def test_each_rank_reads_the_rows_of_its_shards(fake_group, saved, layout):
    rank, world = fake_group
    full = load_file(str(saved / "original" / "diffusion_pytorch_model.safetensors"))
    mesh = init_device_mesh("cpu", (world,))  # FSDP2's default mesh outlives a fake group: name this one
    model = meta_backbone("tiny", "")
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert tuple(mesh.get_coordinate()) == (rank,)
    model.to_empty(device="cpu")
    load_sharded_weights(model, saved / layout)
    for name, p in model.state_dict().items():
        rows = -(-full[name].shape[0] // world)  # torch.chunk's split, as FSDP2's Shard(0)
        assert torch.equal(p.to_local(), full[name][rank * rows : (rank + 1) * rows]), name


@pytest.mark.parametrize("fake_group", [(0, 1)], indirect=True)
def test_sharded_loading_of_another_architecture_is_a_clear_error(fake_group, saved):
    model = meta_backbone("tiny-3layer", "").to_empty(device="cpu")
    with pytest.raises(ConfigMismatchError, match=r"original: missing keys|has shape"):
        load_sharded_weights(model, saved / "original")


def config(out, base, **train):
    return synthetic_run(
        out,
        model={"path": str(base)},
        data={"synthetic_samples": 16},
        optim={"lr": 1e-3, "warmup_steps": 0},
        loss={"distill_weight": 0.5},
        train={"steps": 2, "gradient_checkpointing": True, "precision": "auto", **train},
        checkpoint={"every": 2},
    )


@pytest.mark.slow
def test_fsdp_with_a_sharded_teacher_matches_one_process(saved, tmp_path):
    base = saved / "original"
    Runner(config(tmp_path / "one", base, samples_per_stage=2)).fit()
    torchrun("pyrflow_fast.train", config(tmp_path / "two", base, samples_per_stage=1, parallel="fsdp"), tmp_path)
    np.testing.assert_allclose(losses(tmp_path / "two", "loss"), losses(tmp_path / "one", "loss"), rtol=1e-5)
    distill = losses(tmp_path / "two", "distill")
    assert distill[0] == 0.0 and distill[1] > 0  # the teacher is the initial model; the student moved
    a = read_state_dict(tmp_path / "one" / "export")
    b = read_state_dict(tmp_path / "two" / "export")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
