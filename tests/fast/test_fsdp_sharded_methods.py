"""Every method builds its models on meta, shards them per block (LoRA adapters in their blocks' groups) and
fills them shard by shard; a random initialisation draws what an unsharded one draws.

One process: the replayed initialisation of a WanDiT and its LoRA equals ``WanDiT(config)`` + ``LoRA`` bit for
bit, with the global RNG left in the same state; rank 1 of a fake group of 2 holds exactly its rows of it.
Two gloo processes (torchrun, ``fsdp_layout_worker.py``): every distillation variant's student, critic and
frozen teachers are DTensors (teachers in bf16 under ``train.precision = "bf16"``), the adapters are in the
blocks' FSDP groups, and the losses match one process with the same global batch; a LoRA finetune from a random
initialisation matches one process, and its FSDP resume is bit-exact.
"""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from checkpoint_fixtures import losses, resume_run
from launch_fixtures import REPO, run_torchrun, torchrun
from torch.testing._internal.distributed.fake_pg import FakeStore
from wan_fixtures import random_wan

from pyrflow_fast.distill.config import DistillConfig
from pyrflow_fast.parallel import shard_blocks
from pyrflow_fast.train.distributed import full_state
from pyrflow_fast.train.lora import LoRA
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.train.sharding import full_random, init_like_new
from pyrflow_fast.wan import WanDiT
from pyrflow_fast.wan.checkpoint import save_wan

WORKER = str(REPO / "tests" / "fast" / "fsdp_layout_worker.py")
MATCH_RTOL = 1e-4  # 1 process (batch 2) vs 2 (batch 1 each): same draws, another reduction order


def replayed(sharded: bool):
    """A tiny WanDiT and per-stage LoRA built on meta, (sharded,) materialised and initialised by the replay."""
    with torch.device("meta"):
        model = WanDiT("tiny")
        lora = LoRA(model, 2, 0.0, 3)
    if sharded:
        shard_blocks(model, lora=lora)
    model.to_empty(device="cpu")
    lora.to_empty(device="cpu")
    init_like_new(model)
    with full_random():
        lora.reset_adapters()
    return model, lora


def test_replayed_initialisation_is_a_new_model_and_lora_bit_for_bit():
    torch.manual_seed(5)
    ref = WanDiT("tiny")
    ref_lora = LoRA(ref, 2, 0.0, 3)
    after = torch.rand(4)
    torch.manual_seed(5)
    model, lora = replayed(sharded=False)
    assert torch.equal(torch.rand(4), after)  # the RNG advanced exactly as by the unsharded construction
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for (k, a), b in zip(ref_lora.state_dict().items(), lora.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.fixture
def rank1_of_2():
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    yield
    dist.destroy_process_group()


def test_rank_1_holds_its_rows_of_the_unsharded_initialisation(rank1_of_2):
    torch.manual_seed(5)
    ref = WanDiT("tiny")
    ref_lora = LoRA(ref, 2, 0.0, 3)
    torch.manual_seed(5)
    model, lora = replayed(sharded=True)
    pairs = list(zip(ref.state_dict().items(), model.state_dict().values())) + list(
        zip(ref_lora.state_dict().items(), lora.state_dict().values())
    )
    sharded = 0
    for (key, full), t in pairs:
        if hasattr(t, "device_mesh"):
            sharded += 1
            rows = -(-full.shape[0] // 2)
            assert torch.equal(t.to_local(), full[rows : 2 * rows]), key
        else:
            assert torch.equal(t, full), key
    assert sharded > len(lora.state_dict())  # the blocks and every adapter


def test_only_the_exporting_rank_keeps_the_gathered_state(rank1_of_2):
    """Exports gather every sharded tensor on every rank (a collective) but only the writer keeps them; the
    values a real group gathers are checked against one process by the 2-process export tests."""
    model, _ = replayed(sharded=True)
    assert any(hasattr(t, "device_mesh") for t in model.state_dict().values())
    assert full_state(model.state_dict().items(), keep=False) == {}
    kept = full_state(model.state_dict().items(), keep=True)
    want = WanDiT("tiny").state_dict()
    assert list(kept) == list(want)
    for key, t in kept.items():
        assert type(t) is torch.Tensor and t.device.type == "cpu" and t.shape == want[key].shape, key


def distill_cfg(out, path, variant, **train):
    data = {
        "model": {"config": "tiny", "path": str(path)},
        "data": {"kind": "synthetic", "synthetic_samples": 4, "synthetic_size": [5, 8, 8]},
        "distill": {
            "variant": variant,
            "lora_rank": 2,
            "critic_ratio": 1,
            "regression_schedule": "1-1-1",
            "teacher_finetune_steps": 1,
            "disc_hidden": 8,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"output_dir": str(out), "steps": 1, "batch_size": 2, "progress": False, "device": "cpu", **train},
        "checkpoint": {"every": 1, "export": False},
    }
    return DistillConfig.from_dict(data)


def run_worker(tmp_path, kind, configs):
    spec, out = tmp_path / "configs.json", tmp_path / "layout.json"
    spec.write_text(json.dumps({"kind": kind, "configs": [c.to_dict() for c in configs]}))
    run_torchrun(WORKER, str(spec), str(out), timeout=600)
    return json.loads(out.read_text())


VARIANTS = ["dmd-ot", "dmd-pt*", "adv-od", "adv-pd", "ppf"]


@pytest.mark.slow
def test_every_distillation_variant_is_sharded_and_matches_one_process(tmp_path):
    path = tmp_path / "model"
    save_wan(random_wan("tiny", seed=3, std=0.1), path)
    two = [
        distill_cfg(
            tmp_path / v, path, v, batch_size=1, parallel="fsdp", precision="bf16" if v == "dmd-pt*" else "fp32"
        )
        for v in VARIANTS
    ]
    records = run_worker(tmp_path, "distill", two)
    for variant, record in zip(VARIANTS, records, strict=True):
        layout = record["layout"]
        assert all(f["dtensors"] for f in layout.values()), (variant, layout)
        assert layout["student"]["adapters_in_blocks"], variant
        frozen = [n for n in ("teacher_model", "original", "ppf_teacher") if n in layout]
        assert frozen and all(layout[n]["max_local"] < 5000 for n in frozen), variant  # tiny: at most 6144 per tensor
        if variant == "dmd-pt*":  # bf16 run: the frozen teacher is stored in bf16, the trained models in float32
            assert layout["teacher_model"]["dtypes"] == ["torch.bfloat16"]
            assert layout["critic_model"]["dtypes"] == ["torch.float32"]
            continue
        one = Runner(distill_cfg(tmp_path / f"one-{variant}", path, variant, precision="fp32")).fit()
        for key in ("critic_loss", "generator_loss"):
            np.testing.assert_allclose(record["metrics"][0][key], one[0][key], rtol=MATCH_RTOL, err_msg=variant)


def lora_finetune(out, **train):
    cfg = resume_run(out, **{"gradient_checkpointing": True, **train})
    cfg.lora.rank, cfg.lora.per_stage, cfg.optim.warmup_steps = 2, True, 0
    return cfg


@pytest.mark.slow
def test_random_init_lora_finetune_shards_adapters_with_blocks_matches_one_process_and_resumes(tmp_path):
    single = Runner(lora_finetune(tmp_path / "one"))
    single.fit()
    (record,) = run_worker(tmp_path, "train", [lora_finetune(tmp_path / "two", samples_per_stage=1, parallel="fsdp")])
    assert record["layout"]["base"]["dtensors"] and record["layout"]["base"]["adapters_in_blocks"]
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    resumed = tmp_path / "resumed"
    torchrun("pyrflow_fast.train", lora_finetune(resumed, samples_per_stage=1, parallel="fsdp", steps=2), tmp_path)
    torchrun("pyrflow_fast.train", lora_finetune(resumed, samples_per_stage=1, parallel="fsdp"), tmp_path, "--resume")
    assert losses(resumed) == losses(tmp_path / "two")
