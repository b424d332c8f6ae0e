"""Checkpoints: both layouts, sharding, .pth, strict errors, NaN/Inf report, converter CLI."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from wan_fixtures import random_wan

from pyrflow_fast.wan.checkpoint import (
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    NonFiniteWeightsWarning,
    load_wan,
    read_state_dict,
    save_wan,
    write_state_dict,
)
from pyrflow_fast.wan.convert import main as convert_main
from pyrflow_fast.wan.keys import to_diffusers_state_dict


@pytest.fixture(scope="module")
def model():
    return random_wan("tiny-3layer", seed=7)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _write_original(model, folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_original_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))


def test_original_layout_single_file(model, tmp_path):
    _write_original(model, tmp_path / "wan")
    _assert_same_weights(load_wan(tmp_path / "wan"), model)
    _assert_same_weights(load_wan(tmp_path / "wan" / WEIGHTS_NAME), model)


def test_loaded_model_computes_bit_identically_to_the_saved_one(tmp_path):
    # safetensors buffers can start off the allocator's 64-byte alignment; the loader copies
    # those tensors so the CPU kernels (and so the outputs) are the same as the saved model's.
    for seed in range(5):
        model = random_wan("tiny-3layer", seed=seed)
        save_wan(model, tmp_path / f"m{seed}")
        loaded = load_wan(tmp_path / f"m{seed}")
        assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, model.config.in_dim, 3, 8, 8, generator=gen)
        ctx = torch.randn(1, model.config.text_len, model.config.text_dim, generator=gen)
        with torch.no_grad():
            assert torch.equal(model(x, torch.tensor([500.0]), ctx), loaded(x, torch.tensor([500.0]), ctx)), seed


def test_original_layout_sharded_by_hand(model, tmp_path):
    # Shards written independently of save_wan, the way the 14B release is laid out.
    folder = tmp_path / "wan14"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_original_dict()))
    sd = model.state_dict()
    keys = list(sd)
    parts = [keys[0::3], keys[1::3], keys[2::3]]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-00003.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    _assert_same_weights(load_wan(folder), model)
    _assert_same_weights(load_wan(folder / INDEX_NAME), model)


def test_diffusers_layout_by_hand(model, tmp_path):
    folder = tmp_path / "repo" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_diffusers_dict()))
    save_file(
        {k: v.contiguous() for k, v in to_diffusers_state_dict(model.state_dict()).items()}, str(folder / WEIGHTS_NAME)
    )
    text_len = model.config.text_len
    _assert_same_weights(load_wan(tmp_path / "repo", text_len=text_len), model)
    _assert_same_weights(load_wan(folder, text_len=text_len), model)


def test_pth_is_read_with_weights_only(model, tmp_path):
    path = tmp_path / "wan.pth"
    torch.save(model.state_dict(), path)
    _assert_same_weights(load_wan(path, model.config), model)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    _assert_same_weights(load_wan(tmp_path / "wrapped.pt", model.config), model)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.target}",))


def test_pth_with_code_is_not_unpickled(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: Weights only load failed \(.*posix\.system"):
        load_wan(path, "tiny")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("shard", [None, 4000])
def test_save_load_round_trip(model, tmp_path, layout, shard):
    folder = save_wan(model, tmp_path / "out", layout=layout, max_shard_size=shard)
    files = sorted(p.name for p in folder.iterdir())
    assert "config.json" in files
    if shard:
        assert INDEX_NAME in files and sum(f.endswith(".safetensors") for f in files) > 2
    else:
        assert WEIGHTS_NAME in files
    if layout == "diffusers":
        assert folder.name == "transformer"
        assert json.loads((folder / "config.json").read_text())["_class_name"] == "WanTransformer3DModel"
        assert any(k.startswith("condition_embedder.") for k in read_state_dict(folder))
    loaded = load_wan(tmp_path / "out", text_len=model.config.text_len)
    assert loaded.config == model.config
    _assert_same_weights(loaded, model)


def test_diffusers_layout_loads_into_diffusers(model, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    folder = save_wan(model, tmp_path / "repo", layout="diffusers")
    cfg = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    theirs = diffusers.WanTransformer3DModel.from_config(cfg)  # as diffusers reads config.json: extra keys ignored
    theirs.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    x = torch.randn(1, 4, 2, 4, 4)
    ctx = torch.randn(1, model.config.text_len, model.config.text_dim)
    with torch.no_grad():
        a, b = model(x, 400.0, ctx), theirs(x, torch.tensor([400.0]), ctx, return_dict=False)[0]
    assert float((a - b).norm() / b.norm()) <= 1e-5


def test_bf16_checkpoint_keeps_dtype_or_casts(model, tmp_path):
    bf = random_wan("tiny-3layer", seed=7).to(torch.bfloat16)
    save_wan(bf, tmp_path / "bf")
    loaded = load_wan(tmp_path / "bf")
    _assert_same_weights(loaded, bf)
    as32 = load_wan(tmp_path / "bf", dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as32.parameters())
    x = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert loaded(x, 10.0, torch.randn(1, 6, 12)).dtype == torch.float32


def _corrupt(model, tmp_path, edit):
    sd = dict(model.state_dict())
    edit(sd)
    folder = tmp_path / "bad"
    write_state_dict(sd, folder)
    (folder / "config.json").write_text(json.dumps(model.config.to_original_dict()))
    return folder


def test_strict_error_lists_everything(model, tmp_path):
    def edit(sd):
        for i in range(7):  # 7 missing: the message shows 5 and the count
            sd.pop(f"blocks.{i % 3}.ffn.{0 if i < 3 else 2}.{'weight' if i % 2 else 'bias'}", None)
        sd["blocks.0.extra.weight"] = torch.zeros(2)
        sd["head.head.bias"] = torch.zeros(5)

    with pytest.raises(CheckpointError) as err:
        load_wan(_corrupt(model, tmp_path, edit))
    msg = str(err.value)
    assert "7 missing keys: blocks.0.ffn.0.bias" in msg and ", ..." in msg
    assert "1 unexpected keys: blocks.0.extra.weight" in msg
    assert "1 shape mismatches: head.head.bias (checkpoint (5,), model (24,))" in msg


def test_nonfinite_weights_are_reported(model, tmp_path):
    def edit(sd):
        sd["blocks.1.self_attn.q.weight"] = sd["blocks.1.self_attn.q.weight"].clone()
        sd["blocks.1.self_attn.q.weight"][0, :3] = float("nan")
        sd["head.modulation"] = sd["head.modulation"].clone()
        sd["head.modulation"][0, 0, 0] = float("inf")

    folder = _corrupt(model, tmp_path, edit)
    report = r"2 tensors: blocks.1.self_attn.q.weight \(3 NaN, 0 Inf\), head.modulation \(0 NaN, 1 Inf\)"
    with pytest.raises(CheckpointError, match=report):
        load_wan(folder)
    with pytest.warns(NonFiniteWeightsWarning, match="non-finite"):
        load_wan(folder, nonfinite="warn")
    assert torch.isinf(load_wan(folder, nonfinite="ignore").head.modulation).any()


def test_missing_config_and_files(model, tmp_path):
    folder = tmp_path / "noconfig"
    write_state_dict(model.state_dict(), folder)
    with pytest.raises(CheckpointError, match="config"):
        load_wan(folder)
    _assert_same_weights(load_wan(folder, "tiny-3layer"), model)
    with pytest.raises(FileNotFoundError):
        load_wan(tmp_path / "nothing", "tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_wan(tmp_path / "empty", "tiny")


def test_convert_cli(model, tmp_path, capsys):
    src = save_wan(model, tmp_path / "orig")
    assert convert_main([str(src), str(tmp_path / "diff"), "--to", "diffusers", "--max-shard-size", "4KB"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "diff" / "transformer" / INDEX_NAME).is_file()
    assert convert_main([str(tmp_path / "diff"), str(tmp_path / "back"), "--to", "original"]) == 0
    _assert_same_weights(load_wan(tmp_path / "back"), model)
    assert convert_main([str(tmp_path / "missing"), str(tmp_path / "x"), "--to", "original"]) == 2
    assert "error:" in capsys.readouterr().err


def test_convert_runs_as_module(model, tmp_path):
    src = save_wan(model, tmp_path / "orig")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pyrflow_fast.wan.convert", str(src), str(tmp_path / "d")]
    cmd += ["--to", "diffusers", "--dtype", "bfloat16"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    loaded = load_wan(tmp_path / "d", text_len=model.config.text_len)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())


def test_diffusers_config_keeps_a_non_default_text_len():
    from pyrflow_fast.wan import get_config

    shapes = get_config("shapes")
    d = shapes.to_diffusers_dict()
    assert d["text_len"] == 16 and type(shapes).from_diffusers_dict(d) == shapes
    wan = get_config("wan2.1-t2v-1.3b")
    assert "text_len" not in wan.to_diffusers_dict()
    assert type(wan).from_diffusers_dict(wan.to_diffusers_dict(), text_len=77).text_len == 77
