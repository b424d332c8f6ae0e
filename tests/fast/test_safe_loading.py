"""No code runs when pyrflow loads a file, and a damaged weight file is an error naming it.

Every file type pyrflow unpickles gets a pickle payload planted (an object whose unpickling would
create a marker file): the training checkpoint's RNG file and its DCP ``.metadata`` (through
``pyrflow-train --resume``, as a user meets them), a Wan ``.pth`` transformer checkpoint, and Wan's
original umT5 and VAE ``.pth`` files. Each load is refused with an error that names the file, the
CLI prints it without a traceback, and the marker is never created.

Every safetensors reader (transformer weights and shards, the diffusers-layout text encoder and
VAE, PPF's per-stage layers) meets files written by ``safetensors.torch.save_file`` and then
truncated, given a garbage header or a header that is not JSON: each is a ``CheckpointError``
naming the file.
"""

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from checkpoint_fixtures import reseal
from pipeline_fixtures import write_tiny_wan_dir
from safetensors.torch import save_file

from pyrflow_fast.card import PPF_FILE, ModelCard, load_ppf
from pyrflow_fast.pipeline import load_text_encoder, load_vae
from pyrflow_fast.pipeline.layout import ORIGINAL_T5, ORIGINAL_VAE
from pyrflow_fast.train import cli
from pyrflow_fast.train.checkpoint import latest_checkpoint
from pyrflow_fast.train.config import TrainConfig
from pyrflow_fast.wan import WanDiT
from pyrflow_fast.wan.checkpoint import CheckpointError, load_wan, read_safetensors, safetensors_metadata, save_wan


class _Payload:
    """Unpickling this creates ``marker``: code that must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 2-step training run with its checkpoint, and its config file."""
    root = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.from_dict(
        {
            "model": {"config": "tiny"},
            "data": {"kind": "synthetic", "synthetic_samples": 8},
            "train": {"output_dir": str(root / "run"), "steps": 2, "samples_per_stage": 1, "progress": False},
            "checkpoint": {"every": 2, "export": False},
        }
    )
    (root / "cfg.json").write_text(cfg.to_json())
    assert cli.main(["--config", str(root / "cfg.json")]) == 0
    return root


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "original", layout="original")


def _plant(path: Path, marker: Path) -> None:
    """Rewrite the torch file ``path`` (a dict of tensors) with a payload among its tensors."""
    sd = torch.load(path, weights_only=True)
    sd["payload"] = _Payload(str(marker))
    torch.save(sd, path)


def _resume(root: Path, capsys) -> str:
    """``pyrflow-train --resume`` of the run in ``root`` to 4 steps; returns its stderr (it must fail with 2)."""
    cfg = json.loads((root / "cfg.json").read_text())
    cfg["train"]["steps"] = 4
    (root / "cfg4.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert cli.main(["--config", str(root / "cfg4.json"), "--resume"]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("kind", ["rng file", "DCP metadata", "transformer .pth", "umT5 .pth", "VAE .pth"])
def test_a_pickle_payload_is_refused_with_the_file_named_and_never_runs(
    kind, finished_run, original_dir, tmp_path, capsys
):
    marker = tmp_path / "pwned"
    if kind in ("rng file", "DCP metadata"):
        root = tmp_path / "copy"
        shutil.copytree(finished_run, root)
        cfg = json.loads((root / "cfg.json").read_text())
        cfg["train"]["output_dir"] = str(root / "run")
        (root / "cfg.json").write_text(json.dumps(cfg))
        ckpt = latest_checkpoint(root / "run")
        if kind == "rng file":
            target = ckpt / "rng_rank0.pt"
            torch.save(_Payload(str(marker)), target)
        else:
            target = ckpt  # DCP names the checkpoint and the metadata file inside it
            (ckpt / "state" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
        reseal(ckpt)  # whoever can write the folder can rewrite its manifest too
        err = _resume(root, capsys)
        assert str(target) in err and "Traceback" not in err, err
    else:
        if kind == "transformer .pth":
            target = tmp_path / "wan.pth"
            torch.save(WanDiT("tiny").state_dict(), target)
            _plant(target, marker)
            load = lambda: load_wan(target, config="tiny")  # noqa: E731
        else:
            name = ORIGINAL_T5 if kind == "umT5 .pth" else ORIGINAL_VAE
            target = tmp_path / name
            shutil.copy(original_dir / name, target)
            _plant(target, marker)
            loader = load_text_encoder if kind == "umT5 .pth" else load_vae
            load = lambda: loader(target, layout="original")  # noqa: E731
        with pytest.raises(CheckpointError, match="Weights only load failed") as err:
            load()
        assert str(target) in str(err.value) and "never runs pickled code" in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------------ damaged safetensors
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage header":
        path.write_bytes(b"\xff" * 8 + data[8:])
    elif how == "header not JSON":
        header = b"{'not': json}"
        path.write_bytes(struct.pack("<Q", len(header)) + header + data[8:])
    else:
        path.write_bytes(b"")


DAMAGES = ["truncated", "garbage header", "header not JSON", "empty"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_safetensors_file_is_an_error_naming_it(how, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(32, 32), "b": torch.randn(32)}, str(path), metadata={"format": "pt"})
    assert safetensors_metadata(path) == {"format": "pt"}
    _damage(path, how)
    for read in (read_safetensors, safetensors_metadata):
        with pytest.raises(CheckpointError, match=r"not a valid safetensors file .*re-download or re-convert") as err:
            read(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("how", DAMAGES)
def test_every_safetensors_reader_names_the_damaged_file(how, tmp_path):
    wan = tmp_path / "wan"
    save_wan(WanDiT("tiny"), wan, max_shard_size=20_000)  # shards and an index
    shard = sorted(wan.glob("diffusion_pytorch_model-*.safetensors"))[-1]
    tiny = write_tiny_wan_dir(tmp_path / "diffusers", layout="diffusers")
    ppf_dir = tmp_path / "ppf"
    ppf_dir.mkdir()
    save_file({"stage_embedding": torch.zeros(3, 32)}, str(ppf_dir / PPF_FILE))
    card = ModelCard(kind="distilled", ppf_patches=((1, 2, 2), (1, 4, 4), (1, 8, 8)))
    readers = [
        (shard, lambda: load_wan(wan)),
        (
            tiny / "text_encoder" / "model.safetensors",
            lambda: load_text_encoder(tiny / "text_encoder", layout="diffusers"),
        ),
        (tiny / "vae" / "diffusion_pytorch_model.safetensors", lambda: load_vae(tiny / "vae", layout="diffusers")),
        (ppf_dir / PPF_FILE, lambda: load_ppf(ppf_dir, WanDiT("tiny"), card)),
    ]
    for path, load in readers:
        _damage(path, how)
        with pytest.raises(CheckpointError, match="not a valid safetensors file") as err:
            load()
        assert str(path) in str(err.value)


def test_a_damaged_index_or_config_is_an_error_naming_it(tmp_path):
    wan = tmp_path / "wan"
    save_wan(WanDiT("tiny"), wan, max_shard_size=20_000)
    index = wan / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(index.read_text()[:-40])
    with pytest.raises(CheckpointError, match="not a valid index file") as err:
        load_wan(wan)
    assert str(index) in str(err.value)
    (wan / "config.json").write_text('{"dim": 32, "num_heads": 0}')
    with pytest.raises(CheckpointError, match=r"not a valid Wan transformer config .*num_heads") as err:
        load_wan(wan)
    assert str(wan / "config.json") in str(err.value)
