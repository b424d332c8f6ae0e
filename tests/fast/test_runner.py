"""The training runner: method registry, LR schedule, checkpoint mismatch (pyrflow_fast.train.runner / methods)."""

import math

import pytest
from wan_fixtures import random_wan

from pyrflow_fast.distill.config import VARIANTS, DistillConfig
from pyrflow_fast.distill.dmd import DMDVariant
from pyrflow_fast.train.checkpoint import ConfigMismatchError
from pyrflow_fast.train.config import TrainConfig
from pyrflow_fast.train.methods import (
    METHODS,
    AdversarialDistillation,
    DMDDistillation,
    PPFDistillation,
    PyramidalFinetune,
)
from pyrflow_fast.train.runner import Runner, lr_lambda
from pyrflow_fast.wan.checkpoint import save_wan


def test_every_config_names_one_registered_method():
    assert set(METHODS) == set(VARIANTS) | {"finetune"}
    assert METHODS[TrainConfig().method][0] is PyramidalFinetune
    classes = {v: METHODS[DistillConfig.from_dict({"distill": {"variant": v}}).method] for v in VARIANTS}
    assert classes["dmd-ot"] == (DMDDistillation, {"variant": DMDVariant.OT})
    assert classes["dmd-pt"] == (DMDDistillation, {"variant": DMDVariant.PT})
    assert classes["dmd-pt*"] == (DMDDistillation, {"variant": DMDVariant.PT_STAR})
    assert classes["adv-od"] == (AdversarialDistillation, {"original_features": True})
    assert classes["adv-pd"] == (AdversarialDistillation, {"original_features": False})
    assert classes["ppf"] == (PPFDistillation, {})


def test_warmup_is_a_line_from_zero_to_the_peak_then_the_schedule():
    constant = lr_lambda(4, "constant", 0.0, 10)
    assert [constant(n) for n in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    cosine = lr_lambda(2, "cosine", 0.1, 12)
    assert cosine(1) == 2 / 3 and cosine(2) == 1.0
    assert math.isclose(cosine(7), 0.1 + 0.9 * 0.5) and math.isclose(cosine(12), 0.1) and cosine(50) == cosine(12)
    assert lr_lambda(0, "constant", 0.0, 5)(0) == 1.0


def test_resuming_another_variant_is_a_config_mismatch(tmp_path):
    save_wan(random_wan("tiny", seed=3, std=0.1), tmp_path / "model")

    def config(variant):
        return DistillConfig.from_dict(
            {
                "model": {"config": "tiny", "path": str(tmp_path / "model")},
                "data": {"kind": "synthetic", "synthetic_samples": 2, "synthetic_size": [5, 8, 8]},
                "distill": {"variant": variant, "lora_rank": 2, "regression_schedule": "1-1-1", "disc_hidden": 8},
                "train": {"output_dir": str(tmp_path / "run"), "steps": 1, "progress": False},
                "checkpoint": {"every": 1, "export": False},
            }
        )

    Runner(config("dmd-pt*")).fit()
    with pytest.raises(ConfigMismatchError, match="distill.variant = 'dmd-pt\\*', the config says 'adv-pd'"):
        Runner(config("adv-pd")).fit(resume=True)
