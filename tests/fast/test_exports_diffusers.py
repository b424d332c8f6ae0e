"""Exports (write_model_dir) load with diffusers' own WanPipeline.from_pretrained, and the scheduler config."""

import json
import os

import pytest
import torch
from pipeline_fixtures import write_tiny_wan_dir
from wan_fixtures import random_wan

diffusers = pytest.importorskip("diffusers")

from pyrflow_fast.card import CARD_FILE, ModelCard, write_model_dir  # noqa: E402
from pyrflow_fast.pipeline import load_components  # noqa: E402
from pyrflow_fast.scheduler import load_scheduler_config, write_scheduler  # noqa: E402
from pyrflow_fast.solvers import WAN_SCHEDULER_CONFIG as WAN_SCHEDULER  # noqa: E402
from pyrflow_fast.train.lora import LoRA, stage_lora_file, write_lora_export  # noqa: E402
from pyrflow_fast.wan.checkpoint import load_wan  # noqa: E402
from pyrflow_fast.wan.keys import to_diffusers_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "wan", layout="diffusers")


def _trained(source):
    model = load_wan(source)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model


def test_export_of_a_diffusers_source_loads_with_wan_pipeline(tmp_path, source):
    trained = _trained(source)
    card = ModelCard(kind="pyramidal", uncond="zeros")
    out = tmp_path / "export"
    write_model_dir(out, trained.state_dict(), card, trained.config, str(source), layout="original")
    pipe = diffusers.WanPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, diffusers.AutoencoderKLWan)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    sd = pipe.transformer.state_dict()
    want = to_diffusers_state_dict(trained.state_dict())
    assert sorted(sd) == sorted(want) and all(torch.equal(sd[k], want[k]) for k in want)
    # the scheduler is Wan's default: UniPC on flow sigmas at flow_shift 3
    assert isinstance(pipe.scheduler, diffusers.UniPCMultistepScheduler)
    assert {k: pipe.scheduler.config[k] for k in WAN_SCHEDULER if not k.startswith("_")} == {
        k: v for k, v in WAN_SCHEDULER.items() if not k.startswith("_")
    }
    # pyrflow still reads it, and its card is the extra file diffusers ignores
    assert ModelCard.load(out) == card and (out / CARD_FILE).is_file()
    components = load_components(out)
    assert torch.equal(components.transformer.patch_embedding.weight, trained.patch_embedding.weight)
    assert load_scheduler_config(out)["flow_shift"] == 3.0


def test_a_source_scheduler_is_linked_and_the_index_lists_what_the_folder_holds(tmp_path, source):
    src = tmp_path / "wan"
    src.mkdir()
    for name in os.listdir(source):
        os.symlink(source / name, src / name)
    write_scheduler(src, {**WAN_SCHEDULER, "flow_shift": 5.0})  # a 720p download
    trained = _trained(source)
    out = tmp_path / "export"
    write_model_dir(out, trained.state_dict(), ModelCard(), trained.config, str(src))
    assert (out / "scheduler").is_symlink()
    assert diffusers.WanPipeline.from_pretrained(out).scheduler.config.flow_shift == 5.0
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert index["tokenizer"] == json.loads((source / "model_index.json").read_text())["tokenizer"]
    assert not (out / "model_index.json").is_symlink()  # this folder's own, not the source's


def test_a_transformer_only_export_loads_with_the_other_components_passed(tmp_path):
    model = random_wan("tiny", seed=3)
    write_model_dir(tmp_path / "a", model.state_dict(), ModelCard(), model.config, layout="diffusers")
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    assert index["vae"] == index["text_encoder"] == index["tokenizer"] == [None, None]
    pipe = diffusers.WanPipeline.from_pretrained(tmp_path / "a", vae=None, text_encoder=None, tokenizer=None)
    assert isinstance(pipe.transformer, diffusers.WanTransformer3DModel)
    assert isinstance(pipe.scheduler, diffusers.UniPCMultistepScheduler)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")  # peft: 2nd adapter
def test_per_stage_lora_export_loads_with_wan_pipeline_and_its_lora_loader(tmp_path, source):
    base = load_wan(source)
    lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    out = tmp_path / "export"
    write_lora_export(out, lora, base.state_dict(), ModelCard(kind="pyramidal"), base.config, source_path=str(source))
    pipe = diffusers.WanPipeline.from_pretrained(out)
    for i in range(3):
        pipe.load_lora_weights(out, weight_name=stage_lora_file(i), adapter_name=f"stage{i}")
    cfg = base.config
    x = torch.randn(1, cfg.in_dim, 3, 4, 4, generator=gen)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    lora.remove()
    for i in range(3):
        pipe.set_adapters(f"stage{i}")
        merged = load_wan(out / f"stage{i}")
        with torch.no_grad():
            a = pipe.transformer(x, t, ctx, return_dict=False)[0]
            b = merged(x, t, ctx)
        assert float((a - b).norm() / b.norm()) <= 5e-5
        # the merged stage folders load with diffusers too
        assert isinstance(diffusers.WanPipeline.from_pretrained(out / f"stage{i}").scheduler, type(pipe.scheduler))


def test_scheduler_config_of_a_folder_without_one_is_wan_default_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="has no scheduler/scheduler_config.json; using Wan2.1's default"):
        config = load_scheduler_config(tmp_path)
    assert config == WAN_SCHEDULER
    config["flow_shift"] = 1.0  # a copy
    assert WAN_SCHEDULER["flow_shift"] == 3.0
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a diffusers scheduler config"):
        load_scheduler_config(tmp_path)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_scheduler_config(tmp_path)
