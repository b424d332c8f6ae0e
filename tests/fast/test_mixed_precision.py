"""bf16 autocast in training and distillation (``train.precision``), run on CPU.

One step each: the blocks compute in bf16 (a hook sees bf16 activations), the loss is finite, the
trained parameters moved and stayed float32 master copies with float32 AdamW moments; frozen
teachers are stored in bf16. The default ``auto`` is bf16 on CUDA only, so CPU runs stay float32.
"""

import pytest
import torch
from wan_fixtures import random_wan

from pyrflow_fast.distill.config import DistillConfig
from pyrflow_fast.train.config import synthetic_run
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.wan.checkpoint import save_wan


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_wan(random_wan("tiny", seed=3, std=0.1), path)
    return path


def block_dtypes(model):
    """Record the output dtype of the first block's FFN input Linear on every call."""
    seen = []
    model.blocks[0].ffn[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def check_trained(runner, before, history, key):
    assert all(torch.isfinite(torch.tensor(m[key])) for m in history)
    for name, role in runner.method.roles.items():
        assert all(p.dtype == torch.float32 for p in role.params), name
        moments = [s["exp_avg"] for s in role.optimizer.state.values()]
        assert moments and all(m.dtype == torch.float32 for m in moments), name
    after = [p.detach() for role in runner.method.roles.values() for p in role.params]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_finetune_step_in_bf16_autocast_keeps_float32_masters(tmp_path, model_path, precision):
    cfg = synthetic_run(
        tmp_path,
        model={"path": str(model_path)},
        data={"synthetic_samples": 4},
        optim={"lr": 1e-3, "warmup_steps": 0},
        loss={"distill_weight": 0.5},
        train={"steps": 1, "samples_per_stage": 1, "gradient_checkpointing": True, "precision": precision},
        checkpoint={"export": False},
    )
    runner = Runner(cfg)
    seen = block_dtypes(runner.method.net.backbone.model)
    before = [p.detach().clone() for role in runner.method.roles.values() for p in role.params]
    history = runner.fit()
    check_trained(runner, before, history, "loss")
    want = torch.bfloat16 if precision == "bf16" else torch.float32  # auto on CPU: float32
    assert set(seen) == {want}
    assert {p.dtype for p in runner.method.teacher_model.model.parameters()} == {want}


def test_distillation_iteration_in_bf16_autocast_keeps_float32_masters(tmp_path, model_path):
    cfg = DistillConfig.from_dict(
        {
            "model": {"config": "tiny", "path": str(model_path)},
            "data": {"kind": "synthetic", "synthetic_samples": 4, "synthetic_size": [5, 8, 8]},
            "distill": {"variant": "dmd-pt", "lora_rank": 0, "regression_schedule": "1-1-1", "guidance": 2.0},
            "optim": {"lr": 1e-3, "warmup_steps": 0},
            "train": {"output_dir": str(tmp_path), "steps": 1, "progress": False, "device": "cpu", "precision": "bf16"},
            "checkpoint": {"export": False},
        }
    )
    runner = Runner(cfg)
    seen = block_dtypes(runner.method.student)
    before = [p.detach().clone() for role in runner.method.roles.values() for p in role.params]
    history = runner.fit()
    check_trained(runner, before, history, "generator_loss")
    assert all(torch.isfinite(torch.tensor(m["critic_loss"])) for m in history)
    assert set(seen) == {torch.bfloat16}
    assert {p.dtype for p in runner.method.teacher_model.parameters()} == {torch.bfloat16}
