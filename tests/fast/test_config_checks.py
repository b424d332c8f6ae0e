"""Config values of the wrong type and impossible model sizes are errors that name the field.

Training and distillation configs check every field against its annotation when they are built
(from a file, ``--set`` or in Python), before any value is used: an int is fine for a float (and
stored as one), a bool is not an int, list items are checked one by one. ``WanConfig`` rejects
zero or negative sizes, widths that do not split into heads, head dims RoPE cannot split and
absurd layer counts before a model is built.
"""

import pytest

from pyrflow_fast.distill.cli import main as distill_main
from pyrflow_fast.distill.config import DistillConfig, DistillRunConfig
from pyrflow_fast.train import cli
from pyrflow_fast.train.config import OptimConfig, PyramidConfig, TrainConfig
from pyrflow_fast.train.distributed import collective_timeout_message
from pyrflow_fast.wan import WanDiT
from pyrflow_fast.wan.config import CONFIGS, WanConfig

BAD_VALUES = [
    ({"optim": {"lr": "abc"}}, "optim.lr: expected a float, got 'abc' (str)"),
    ({"optim": {"lr": None}}, "optim.lr: expected a float, got None (NoneType)"),
    ({"train": {"steps": True}}, "train.steps: expected an int, got True (bool)"),
    ({"train": {"steps": 2.5}}, "train.steps: expected an int, got 2.5 (float)"),
    ({"train": {"progress": 1}}, "train.progress: expected a bool, got 1 (int)"),
    ({"data": {"path": 3}}, "data.path: expected a string, got 3 (int)"),
    ({"optim": {"betas": 0.9}}, "optim.betas: expected a list of floats, got 0.9 (float)"),
    ({"pyramid": {"factors": [2, "2", 2]}}, "pyramid.factors[1]: expected an int, got '2' (str)"),
    ({"pyramid": {"boundaries": [0.5, False]}}, "pyramid.boundaries[1]: expected a float, got False (bool)"),
    ({"train": {"collective_timeout": "10s"}}, "train.collective_timeout: expected a float, got '10s' (str)"),
    ({"train": {"collective_timeout": 0}}, "train.collective_timeout must be a positive number of seconds"),
]


@pytest.mark.parametrize("cls", [TrainConfig, DistillConfig])
@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_a_value_of_the_wrong_type_names_the_field_and_the_type(cls, values, message):
    with pytest.raises(ValueError) as err:
        cls.from_dict(values)
    assert message in str(err.value)


def test_own_fields_of_each_config_are_checked_too():
    with pytest.raises(ValueError, match=r"lora\.rank: expected an int, got 4\.0 \(float\)"):
        TrainConfig.from_dict({"lora": {"rank": 4.0}})
    with pytest.raises(ValueError, match=r"distill\.ppf_patches\[1\]: expected a list of ints, got 4 \(int\)"):
        DistillConfig.from_dict({"distill": {"ppf_patches": [[1, 2, 2], 4, [1, 8, 8]]}})
    with pytest.raises(ValueError, match=r"distill\.ppf_patches\[0\]\[2\]: expected an int, got '2'"):
        DistillConfig.from_dict({"distill": {"ppf_patches": [[1, 2, "2"]]}})


def test_ints_are_floats_and_tuples_lists_and_python_construction_is_checked():
    cfg = TrainConfig.from_dict({"optim": {"lr": 1, "betas": (0, 1)}, "train": {"collective_timeout": 30}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.0, 1.0] and all(isinstance(b, float) for b in cfg.optim.betas)
    assert isinstance(cfg.train.collective_timeout, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"optim\.lr: expected a float, got '1e-4' \(str\)"):
        TrainConfig(optim=OptimConfig(lr="1e-4"))
    with pytest.raises(ValueError, match=r"config section 'train' must be a TrainSection, got DistillRunConfig"):
        TrainConfig(train=DistillRunConfig())
    with pytest.raises(ValueError, match=r"pyramid\.factors: expected a list of ints, got 2 \(int\)"):
        DistillConfig(pyramid=PyramidConfig(factors=2))


@pytest.mark.parametrize("main", [cli.main, distill_main])
def test_set_with_a_value_of_the_wrong_type_is_a_usage_error(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "optim.lr=abc"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: optim.lr: expected a float, got 'abc' (str)" in err and "Traceback" not in err


def test_collective_timeout_message_names_the_field_only_for_timeouts():
    gloo = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation")
    message = collective_timeout_message(gloo, 5.0)
    assert "within train.collective_timeout = 5 s" in message and "Timed out waiting 5000ms" in message
    assert collective_timeout_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 5.0) is None
    assert collective_timeout_message(ValueError("timed out"), 5.0) is None


# ------------------------------------------------------------------------------ model sizes
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 0}, "WanConfig.num_heads must be an int in [1, 65536], got 0"),
        ({"num_heads": -2}, "WanConfig.num_heads must be an int in [1, 65536], got -2"),
        ({"num_heads": True}, "WanConfig.num_heads must be an int in [1, 65536], got True"),
        ({"dim": 0}, "WanConfig.dim must be an int in [1, 65536], got 0"),
        ({"dim": 100, "num_heads": 12}, "dim 100 is not divisible by num_heads 12"),
        ({"dim": 24, "num_heads": 6}, "head dim 4 (dim 24 / num_heads 6) must be even and at least 6"),
        ({"dim": 42, "num_heads": 6}, "head dim 7 (dim 42 / num_heads 6) must be even and at least 6"),
        ({"num_layers": 0}, "WanConfig.num_layers must be an int in [1, 1000], got 0"),
        ({"num_layers": 20000}, "WanConfig.num_layers must be an int in [1, 1000], got 20000"),
        ({"ffn_dim": 10**7}, "WanConfig.ffn_dim must be an int in [1, 262144]"),
        ({"text_len": 0}, "WanConfig.text_len must be an int in [1, 65536], got 0"),
        ({"text_len": 10**6}, "WanConfig.text_len must be an int in [1, 65536]"),
        ({"freq_dim": 10**6}, "WanConfig.freq_dim must be an int in [1, 65536]"),
        ({"freq_dim": 33}, "WanConfig.freq_dim must be even"),
        ({"in_dim": 0}, "WanConfig.in_dim must be an int in [1, 65536], got 0"),
        ({"text_dim": 1.5}, "WanConfig.text_dim must be an int in [1, 65536], got 1.5"),
        ({"patch_size": (1, 0, 2)}, "WanConfig.patch_size must be three positive ints"),
        ({"patch_size": (1, 2)}, "WanConfig.patch_size must be three positive ints"),
        ({"patch_size": (1, 2.5, 2)}, "WanConfig.patch_size must be three positive ints"),
        ({"eps": 0.0}, "WanConfig.eps must be a positive finite number, got 0.0"),
        ({"rope_theta": float("inf")}, "WanConfig.rope_theta must be a positive finite number, got inf"),
    ],
)
def test_impossible_model_sizes_are_rejected_before_a_model_is_built(changes, message):
    with pytest.raises(ValueError) as err:
        WanDiT(CONFIGS["tiny"].replace(**changes))  # the config raises, WanDiT never starts
    assert message in str(err.value)


def test_every_named_config_and_wans_real_sizes_pass():
    for cfg in CONFIGS.values():
        assert WanConfig(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}) == cfg
    assert WanConfig(patch_size=[1, 2, 2]).patch_size == (1, 2, 2)  # a JSON list is fine
