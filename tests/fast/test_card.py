"""pyrflow_fast.card: model cards, the latent pyramid of a card, model directories and PPF layers."""

import doctest
import json
from dataclasses import asdict

import pytest
import torch
from pipeline_fixtures import write_tiny_wan_dir
from safetensors.torch import save_file
from wan_fixtures import random_wan

import pyrflow_fast.card
import pyrflow_fast.sample
from pyrflow_fast.card import (
    CARD_FILE,
    PPF_FILE,
    ModelCard,
    latent_pyramid,
    load_ppf,
    write_model_dir,
)
from pyrflow_fast.pipeline import load_components
from pyrflow_fast.pipeline.layout import find_layout
from pyrflow_fast.ppf import PPFWan
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.shapes import MODELS, model_dir
from pyrflow_fast.wan.checkpoint import load_wan
from pyrflow_ref.resample import TRANSITION_FAMILIES


def test_doctests():
    result = doctest.testmod(pyrflow_fast.card, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_cards_load_and_save_byte_identically(name, tmp_path):
    shipped = model_dir(name) / CARD_FILE
    card = ModelCard.load(model_dir(name))
    assert asdict(card) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(shipped.read_text()).items()
    }
    assert card.save(tmp_path).read_text() == shipped.read_text()
    assert ModelCard.load(tmp_path) == card


def test_every_field_round_trips(tmp_path):
    card = ModelCard(
        kind="distilled",
        num_stages=2,
        boundaries=(0.4,),
        resampler="dct",
        factors=(1, 2, 2),
        rope="scaled",
        schedule="1-3",
        ppf_patches=((1, 2, 2), (1, 4, 4)),
        uncond="zeros",
        guidance=2.5,
        shift=3.0,
    )
    card.save(tmp_path)
    stored = json.loads((tmp_path / CARD_FILE).read_text())
    assert stored["ppf_patches"] == [[1, 2, 2], [1, 4, 4]] and stored["factors"] == [1, 2, 2]
    assert ModelCard.load(tmp_path) == card
    assert ModelCard.load(tmp_path / "elsewhere") == ModelCard()  # no card: a plain Wan checkpoint


def test_cli_offers_the_transition_families():
    resampler = next(a for a in pyrflow_fast.sample.build_parser()._actions if a.dest == "resampler")
    assert tuple(resampler.choices) == TRANSITION_FAMILIES


@pytest.mark.parametrize("family", TRANSITION_FAMILIES)
def test_latent_pyramid(family):
    pyramid = latent_pyramid(family, [2, 2, 2], 3)
    want = Pyramid.uniform(family, (2, 2, 2), 3, first_frame=True)
    assert [(tr.family, tr.factors, tr.first_frame) for tr in pyramid.transitions] == [
        (tr.family, tr.factors, tr.first_frame) for tr in want.transitions
    ]
    assert pyramid.shapes((1, 16, 21, 56, 104)) == want.shapes((1, 16, 21, 56, 104))
    card = ModelCard(resampler=family, factors=(2, 2, 2))
    assert card.pyramid().shapes((1, 4, 9, 8, 8)) == pyramid.shapes((1, 4, 9, 8, 8))


@pytest.mark.parametrize("family", ["avgpool", "orthogonal", "lanczos"])
def test_non_sampling_families_are_refused(family):
    with pytest.raises(ValueError, match=f"unknown resampler '{family}' for sampling; expected 'haar' or 'dct'"):
        latent_pyramid(family, (2, 2, 2), 3)
    with pytest.raises(ValueError, match=f"unknown resampler '{family}' for sampling"):
        ModelCard(resampler=family)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_write_model_dir_links_the_source_components(tmp_path, layout):
    source = write_tiny_wan_dir(tmp_path / "wan", layout=layout)
    trained = load_wan(source)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(0.5)
    card = ModelCard(kind="pyramidal", uncond="zeros")
    out = tmp_path / "export"
    write_model_dir(out, trained.state_dict(), card, trained.config, str(source), layout="original")
    assert find_layout(out) == layout  # the source's layout, whatever was asked
    assert ModelCard.load(out) == card
    linked = [p for p in out.iterdir() if p.is_symlink()]
    assert linked and all(p.resolve().parent == source.resolve() for p in linked)
    components = load_components(out)
    assert _same_weights(components.transformer, trained)


def test_write_model_dir_without_source_writes_the_transformer_only(tmp_path):
    model = random_wan("tiny", seed=4)
    bf16 = {k: v.bfloat16() for k, v in model.state_dict().items()}
    write_model_dir(tmp_path / "a", bf16, ModelCard(), model.config, layout="diffusers")
    write_model_dir(tmp_path / "b", bf16, ModelCard(), model.config, str(tmp_path / "missing"), layout="original")
    # diffusers layout: also what WanPipeline.from_pretrained needs (test_exports_diffusers.py)
    listed = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert listed == sorted([CARD_FILE, "model_index.json", "scheduler", "transformer"])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        [CARD_FILE, "config.json", "diffusion_pytorch_model.safetensors"]
    )
    a, b = load_wan(tmp_path / "a"), load_wan(tmp_path / "b")
    assert a.patch_embedding.weight.dtype == torch.float32  # written in float32
    assert _same_weights(a, b)
    assert torch.equal(a.patch_embedding.weight, bf16["patch_embedding.weight"].float())


def test_load_ppf(tmp_path):
    base = random_wan("tiny", seed=5)
    card = ModelCard(kind="distilled", ppf_patches=((1, 2, 2), (1, 4, 4), (1, 8, 8)))
    trained = PPFWan(random_wan("tiny", seed=5), card.ppf_patches)
    with torch.no_grad():
        trained.stage_embedding.normal_()
        trained.heads[2].weight.mul_(2.0)
    stage_layers = {k: v.contiguous() for k, v in trained.state_dict().items() if not k.startswith("model.")}
    with pytest.raises(FileNotFoundError, match=f"is a PPF checkpoint .* has no {PPF_FILE}"):
        load_ppf(tmp_path, base, card)
    save_file(stage_layers, str(tmp_path / PPF_FILE))
    ppf = load_ppf(tmp_path, base, card)
    assert ppf.model is base and not ppf.training
    assert _same_weights(ppf, trained)
    save_file({**stage_layers, "extra": torch.zeros(1)}, str(tmp_path / PPF_FILE))
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        load_ppf(tmp_path, base, card)
    save_file({k: v for k, v in stage_layers.items() if k != "stage_embedding"}, str(tmp_path / PPF_FILE))
    with pytest.raises(ValueError, match=r"missing \['stage_embedding'\]"):
        load_ppf(tmp_path, base, card)


def test_card_shift_is_the_default_grid_shift_and_an_explicit_one_wins():
    from pyrflow_fast.pipeline.geometry import Geometry
    from pyrflow_fast.request import PYRAMID_SHIFT, Options, prepare

    geometry = Geometry((4, 8, 8), (1, 2, 2))
    base = dict(negative_prompt=None, schedule="4-4-2", sampler="auto", solver="auto", guidance_scale=None)
    size = dict(seed=0, frames=9, height=64, width=64, resampler=None, attention="auto")

    def grid_shift(card, shift):
        return prepare(card, geometry, Options(**base, shift=shift, **size)).plan.shift

    card = ModelCard(kind="pyramidal", shift=3.0)
    assert grid_shift(card, None) == 3.0 and grid_shift(card, 7.0) == 7.0
    assert grid_shift(ModelCard(kind="pyramidal"), None) == PYRAMID_SHIFT
    for bad in (0.0, -1.0, float("inf"), float("nan"), "3"):
        with pytest.raises(ValueError, match="shift must be a positive finite number"):
            ModelCard(shift=bad)
