"""PyramidalWanPipeline: diffusers' pipeline interface over pyrflow's generate(), on stock folders and exports."""

import numpy as np
import pytest
import torch
from pipeline_fixtures import write_tiny_wan_dir

diffusers = pytest.importorskip("diffusers")

from pyrflow_fast.card import ModelCard, write_model_dir  # noqa: E402
from pyrflow_fast.pipeline import load_components  # noqa: E402
from pyrflow_fast.pipeline.pyramidal import PyramidalWanPipeline  # noqa: E402
from pyrflow_fast.sample import generate  # noqa: E402
from pyrflow_fast.wan.checkpoint import load_wan  # noqa: E402

SIZE = {"num_frames": 17, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    source = write_tiny_wan_dir(root / "wan", layout="diffusers")
    model = load_wan(source)
    card = ModelCard(kind="pyramidal", uncond="zeros", guidance=2.0)
    write_model_dir(root / "export", model.state_dict(), card, model.config, str(source))
    return source, root / "export"


def _generate(folder, **kw):
    return generate(load_components(folder), card=ModelCard.load(folder), progress=False, **kw)


def test_pipeline_on_a_pyrflow_export_equals_generate(folders):
    _, export = folders
    pipe = PyramidalWanPipeline.from_pretrained(export)
    assert isinstance(pipe, diffusers.DiffusionPipeline) and pipe.card == ModelCard.load(export)
    assert isinstance(pipe.scheduler, diffusers.UniPCMultistepScheduler)
    kw = dict(schedule="1-1-2", generator=torch.Generator().manual_seed(3), progress=False, **SIZE)
    out = pipe(["a red car", "a dog"], output_type="pt", **kw)
    want = _generate(export, prompts=["a red car", "a dog"], schedule="1-1-2", seed=3, frames=17, height=64, width=64)
    assert out.frames.shape == (2, 17, 3, 64, 64)  # WanPipeline's "pt" frames: (B, F, C, H, W) in [0, 1]
    torch.testing.assert_close(out.frames, ((want.video + 1) / 2).permute(0, 2, 1, 3, 4), rtol=0, atol=1e-6)


def test_pipeline_on_a_stock_diffusers_folder_takes_wan_pipeline_arguments(folders):
    source, _ = folders
    with pytest.warns(UserWarning, match="no scheduler/scheduler_config.json; using Wan2.1's default"):
        pipe = PyramidalWanPipeline.from_pretrained(source)  # the fixture folder has no scheduler/
    assert pipe.card == ModelCard()  # no pyrflow.json: a plain Wan checkpoint
    assert pipe.scheduler.config.flow_shift == 3.0
    kw = dict(num_inference_steps=3, guidance_scale=1.5, negative_prompt="blurry", progress=False, **SIZE)
    out = pipe("a cat", generator=torch.Generator().manual_seed(5), num_videos_per_prompt=2, **kw)
    want = _generate(
        source, prompts=["a cat", "a cat"], schedule="0-0-3", guidance_scale=1.5, negative_prompt="blurry", seed=5,
        frames=17, height=64, width=64,
    )  # fmt: skip
    assert isinstance(out.frames, np.ndarray) and out.frames.shape == (2, 17, 64, 64, 3)
    np.testing.assert_allclose(out.frames, ((want.video + 1) / 2).permute(0, 2, 3, 4, 1).numpy(), atol=1e-6)


def test_pipeline_rejects_what_it_cannot_honour(folders):
    source, _ = folders
    with pytest.raises(TypeError, match="unsupported options \\['revision'\\]"):
        PyramidalWanPipeline.from_pretrained(source, revision="main")
    with pytest.warns(UserWarning, match="no scheduler/"):
        pipe = PyramidalWanPipeline.from_pretrained(source)
    with pytest.raises(ValueError, match="pass one torch.Generator"):
        pipe("a cat", generator=[torch.Generator(), torch.Generator()], num_inference_steps=1, **SIZE)


def test_a_diffusers_transformer_samples_like_pyrflows_wandit(folders):
    """generate() and the pipeline take diffusers' own WanTransformer3DModel (loaded by diffusers from the
    export) in place of pyrflow's WanDiT, for a pyramidal schedule with CFG."""
    import dataclasses

    _, export = folders
    components = load_components(export)
    theirs = diffusers.WanTransformer3DModel.from_pretrained(export / "transformer").eval()
    kw = dict(prompts=["a red car"], schedule="1-1-2", seed=3, frames=17, height=64, width=64, guidance_scale=3.0)
    ours = generate(components, card=ModelCard.load(export), progress=False, **kw)
    via = generate(
        dataclasses.replace(components, transformer=theirs), card=ModelCard.load(export), progress=False, **kw
    )
    assert float((via.latents - ours.latents).norm() / ours.latents.norm()) <= 1e-5
    pipe = PyramidalWanPipeline.from_pretrained(export)
    pipe.transformer = theirs
    out = pipe("a red car", schedule="1-1-2", generator=torch.Generator().manual_seed(3), guidance_scale=3.0,
               output_type="latent", progress=False, **SIZE)  # fmt: skip
    assert float((out.frames - ours.latents).norm() / ours.latents.norm()) <= 1e-5


def test_pipeline_passes_the_context_parallel_plan_to_generate(folders, monkeypatch):
    """The multi-rank path itself is tested through generate() (tests/fast/test_context_parallel.py)."""
    import pyrflow_fast.sample as sample_mod

    _, export = folders
    pipe = PyramidalWanPipeline.from_pretrained(export)
    seen = {}

    def fake(components, prompts, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(sample_mod, "generate", fake)
    with pytest.raises(RuntimeError, match="stop"):
        pipe("a cat", context_parallel="ring", cfg_parallel=True, **SIZE)
    assert (seen["context_parallel"], seen["cfg_parallel"], seen["frames"]) == ("ring", True, 17)
