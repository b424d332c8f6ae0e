"""Periodic samples (``[samples]``): every ``samples.every`` steps the current model samples a few prompts into
``samples/step_<step>/``; sampling leaves training untouched (same losses as without it, EMA swapped back).

One process: a per-stage LoRA finetune with EMA from a tiny Wan directory (text encoder and VAE for the
videos). Two gloo processes: an FSDP-sharded distillation student samples with every rank taking part.
"""

import imageio.v3 as iio
import numpy as np
import pytest
from checkpoint_fixtures import losses
from launch_fixtures import torchrun
from pipeline_fixtures import write_tiny_wan_dir

from pyrflow_fast.distill.config import DistillConfig
from pyrflow_fast.train.config import synthetic_run
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.train.samples import sample_folder

SAMPLES = {"every": 1, "prompts": ["a red car", "a dog"], "size": [17, 64, 64], "format": "gif"}


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "wan", layout="diffusers")


def finetune(out, source, samples):
    cfg = synthetic_run(
        out,
        model={"config": "", "path": str(source)},
        data={"synthetic_samples": 4, "synthetic_size": [5, 8, 8]},
        optim={"lr": 1e-2, "warmup_steps": 0},
        ema={"decay": 0.5},
        train={"steps": 2, "samples_per_stage": 1},
        checkpoint={"every": 2, "export": False},
        samples=samples,
    )
    cfg.lora.rank, cfg.lora.per_stage = 2, True
    return cfg


def test_a_finetune_samples_its_prompts_every_step_without_changing_training(tmp_path, wan_dir):
    run = Runner(finetune(tmp_path / "with", wan_dir, SAMPLES))
    run.fit()
    Runner(finetune(tmp_path / "without", wan_dir, {})).fit()
    assert losses(tmp_path / "with") == losses(tmp_path / "without")  # sampling draws nothing, restores the EMA
    for step in (1, 2):
        folder = sample_folder(tmp_path / "with", step)
        assert sorted(p.name for p in folder.iterdir()) == ["prompt0.gif", "prompt1.gif"]
        assert iio.imread(folder / "prompt0.gif").shape[:3] == (17, 64, 64)
    first, last = (iio.imread(sample_folder(tmp_path / "with", s) / "prompt0.gif") for s in (1, 2))
    assert not np.array_equal(first, last)  # the model moved between the samples


def test_config_needs_prompts_and_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="samples.every > 0 needs samples.prompts"):
        synthetic_run(tmp_path, samples={"every": 5})
    with pytest.raises(ValueError, match="samples.format"):
        synthetic_run(tmp_path, samples={"format": "avi"})


@pytest.mark.slow
def test_a_sharded_distillation_samples_on_every_rank(tmp_path, wan_dir):
    cfg = DistillConfig.from_dict(
        {
            "model": {"config": "", "path": str(wan_dir)},
            "data": {"kind": "synthetic", "synthetic_samples": 4, "synthetic_size": [5, 8, 8]},
            "distill": {"variant": "dmd-pt*", "lora_rank": 2, "critic_ratio": 1, "regression_schedule": "1-1-1"},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "steps": 2,
                "progress": False,
                "device": "cpu",
                "parallel": "fsdp",
            },
            "checkpoint": {"every": 2, "export": False},
            "samples": {**SAMPLES, "every": 2, "prompts": ["a red car"]},
        }
    )
    torchrun("pyrflow_fast.distill", cfg, tmp_path)
    assert [p.name for p in sample_folder(tmp_path / "run", 2).iterdir()] == ["prompt0.gif"]
    assert not sample_folder(tmp_path / "run", 1).exists()


@pytest.mark.slow
def test_a_sharded_lora_finetune_samples_on_every_rank(tmp_path, wan_dir):
    cfg = finetune(tmp_path / "run", wan_dir, {**SAMPLES, "every": 2, "prompts": ["a red car"]})
    cfg.train.parallel = "fsdp"
    torchrun("pyrflow_fast.train", cfg, tmp_path)
    assert [p.name for p in sample_folder(tmp_path / "run", 2).iterdir()] == ["prompt0.gif"]
    assert iio.imread(sample_folder(tmp_path / "run", 2) / "prompt0.gif").shape[:3] == (17, 64, 64)
