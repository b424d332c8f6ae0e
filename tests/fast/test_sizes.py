"""Sizes the pyramid does not divide: padded stage-0 grid, cropped once at the end (theory §3.3)."""

import pytest
import torch
from pipeline_fixtures import write_tiny_wan_dir

from pyrflow_fast.card import ModelCard
from pyrflow_fast.contract import BackboneDenoiser, WanBackbone
from pyrflow_fast.pipeline import load_components
from pyrflow_fast.pipeline.geometry import Geometry, read_geometry
from pyrflow_fast.request import fit_size
from pyrflow_fast.sample import generate
from pyrflow_fast.samplers import guided, sample_euler

KW = dict(schedule="2-2-1", seed=3, negative_prompt="", progress=False)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return load_components(write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "tiny"))


def test_geometry_is_read_from_the_config_files(tmp_path_factory, components):
    for layout in ("diffusers", "original"):
        folder = write_tiny_wan_dir(tmp_path_factory.mktemp(layout) / "tiny", layout=layout)
        assert read_geometry(folder) == Geometry.of(components) == Geometry((4, 8, 8), (1, 2, 2))


def test_output_has_exactly_the_requested_size(components):
    # latent 3x6x2: the 3-stage pyramid (factor 4, patch 2) runs on 5x8x8 and crops back
    out = generate(components, "a dog", frames=9, height=48, width=16, **KW)
    assert out.video.shape == (1, 3, 9, 48, 16) and out.latents.shape == (1, 16, 3, 6, 2)
    assert out.info["padded_latent"] == (5, 8, 8) and torch.isfinite(out.video).all()


def test_padded_run_is_the_crop_of_the_run_at_the_padded_size(components):
    small = generate(components, "a dog", frames=9, height=48, width=16, **KW)
    padded = generate(components, "a dog", frames=17, height=64, width=64, **KW)
    assert padded.info["padded_latent"] == (5, 8, 8)
    assert torch.equal(small.latents, padded.latents[:, :, :3, :6, :2])


def test_a_size_that_fits_is_sampled_as_before(components):
    """The pre-padding generate(): noise at the coarsest stage, pyramidal Euler, no crop."""
    out = generate(components, "a dog", frames=17, height=64, width=64, **KW)
    card = ModelCard()
    plan, pyramid = card.plan("2-2-1"), card.pyramid()
    shape = (1, 16, 5, 8, 8)
    cond = components.encode_prompt(["a dog"])
    model = guided(
        BackboneDenoiser(WanBackbone(components.transformer), full_size=shape[2:]),
        card.guidance,
        uncond=components.encode_prompt([""]),
    )
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(pyramid.shapes(shape)[plan.top], generator=gen)
    ref = sample_euler(model, noise, pyramid, plan.windows, plan, cond=cond, shift=5.0, rng=gen)
    assert out.info["padded_latent"] == (5, 8, 8)
    assert torch.equal(out.latents, ref)
    assert torch.equal(out.video, components.decode_latents(ref))


def test_plain_schedules_take_every_size_wan_takes(components):
    wan, card = Geometry((4, 8, 8), (1, 2, 2)), ModelCard()
    for frames, height, width in ((81, 480, 832), (81, 720, 1280), (21, 80, 48), (5, 16, 16)):
        latent, padded = fit_size(wan, card, card.plan("0-0-50"), frames, height, width)
        assert padded == latent == ((frames - 1) // 4 + 1, height // 8, width // 8)
    out = generate(components, "a dog", frames=9, height=48, width=16, schedule="0-0-2", seed=0, progress=False)
    assert out.video.shape == (1, 3, 9, 48, 16) and out.info["padded_latent"] == (3, 6, 2)
