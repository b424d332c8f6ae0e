"""Exports of an original-layout Wan2.1 folder (``.pth`` VAE and umT5) load with diffusers' own WanPipeline.

The source is the tiny original-layout folder of :func:`pipeline_fixtures.write_tiny_wan_dir` (written by
``write_original_vae`` / ``write_original_text_encoder``); the exports are written by
:func:`pyrflow_fast.card.write_model_dir` and by a tiny ``pyrflow-train`` run, and read back by
``diffusers.WanPipeline.from_pretrained``, ``PyramidalWanPipeline.from_pretrained`` and ``pyrflow-sample``.
"""

import json

import pytest
import torch
from launch_fixtures import sample_args
from pipeline_fixtures import tiny_components, write_tiny_wan_dir
from safetensors import safe_open

diffusers = pytest.importorskip("diffusers")

from pyrflow_fast.card import (  # noqa: E402
    COMPONENTS_DIR,
    ModelCard,
    default_components_dir,
    diffusers_components,
    write_model_dir,
)
from pyrflow_fast.pipeline import load_components, load_text_encoder, write_original_text_encoder  # noqa: E402
from pyrflow_fast.pipeline.layout import ORIGINAL_T5, ORIGINAL_VAE, find_layout  # noqa: E402
from pyrflow_fast.pipeline.pyramidal import PyramidalWanPipeline  # noqa: E402
from pyrflow_fast.request import WAN_NEGATIVE_PROMPT  # noqa: E402
from pyrflow_fast.sample import generate  # noqa: E402
from pyrflow_fast.sample import main as sample_main  # noqa: E402
from pyrflow_fast.train.config import synthetic_run  # noqa: E402
from pyrflow_fast.train.lora import LoRA, write_lora_export  # noqa: E402
from pyrflow_fast.train.runner import Runner  # noqa: E402
from pyrflow_fast.wan.checkpoint import load_wan  # noqa: E402
from pyrflow_fast.wan.keys import to_diffusers_state_dict  # noqa: E402

FRAMES, HEIGHT, WIDTH, STEPS = 5, 32, 32, 3


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "Wan2.1-tiny", layout="original")


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_of_an_original_source_is_a_wan_pipeline_that_samples_like_the_source(tmp_path, source):
    trained = tiny_components(seed=5).transformer  # the source's architecture, other weights: a finetune
    out = tmp_path / "run" / "export"
    write_model_dir(out, trained.state_dict(), ModelCard(kind="pyramidal"), trained.config, str(source))
    assert find_layout(out) == "diffusers"
    pipe = diffusers.WanPipeline.from_pretrained(out)
    # the components are the source's, bit for bit, and the transformer is the trained one
    theirs = load_components(source)
    assert _same(pipe.vae, theirs.vae) and _same(pipe.text_encoder, theirs.text_encoder)
    assert pipe.tokenizer("a red car").input_ids == theirs.tokenizer("a red car").input_ids
    want = to_diffusers_state_dict(trained.state_dict())
    sd = pipe.transformer.state_dict()
    assert sorted(sd) == sorted(want) and all(torch.equal(sd[k], want[k]) for k in want)
    # diffusers' own sampler on the export gives pyrflow's UniPC video of the source + the trained weights
    pipe.set_progress_bar_config(disable=True)
    kw = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=4.0)
    z = pipe("a red car", negative_prompt=WAN_NEGATIVE_PROMPT, generator=torch.Generator().manual_seed(2), **kw)
    theirs.transformer = trained
    ours = generate(
        theirs, "a red car", schedule=f"0-0-{STEPS}", solver="unipc", guidance_scale=4.0, seed=2,
        frames=FRAMES, height=HEIGHT, width=WIDTH, progress=False,
    )  # fmt: skip
    video = torch.as_tensor(z.frames)  # (B, F, H, W, 3) in [0, 1]
    assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    want_video = ((ours.video + 1) / 2).permute(0, 2, 3, 4, 1)
    assert float((video - want_video).norm() / want_video.norm()) <= 1e-5  # another seed differs by O(1)
    # pyrflow's pipeline and CLI read the export too
    assert isinstance(PyramidalWanPipeline.from_pretrained(out).vae, diffusers.AutoencoderKLWan)
    assert sample_main(sample_args(out, "a dog", tmp_path / "v.gif", "--schedule", "1-1-1")) == 0


def test_components_are_converted_once_per_source_and_linked_relatively(tmp_path, source):
    base = load_wan(source)
    lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
    run = tmp_path / "run"
    write_lora_export(
        run / "export", lora, base.state_dict(), ModelCard(kind="pyramidal"), base.config, source_path=str(source)
    )
    write_model_dir(run / "other", base.state_dict(), ModelCard(), base.config, str(source))
    assert default_components_dir(run / "export" / "stage1") == (run / COMPONENTS_DIR).resolve()
    (converted,) = (run / COMPONENTS_DIR).iterdir()  # one conversion for five exports
    tokenizer_class = type(load_components(source, transformer=False).tokenizer).__name__
    exports = [run / "export", *(run / "export" / f"stage{i}" for i in range(3)), run / "other"]
    for export in exports:
        for name in ("text_encoder", "tokenizer", "vae"):
            link = export / name
            assert link.is_symlink() and not link.readlink().is_absolute()
            assert link.resolve() == (converted / name).resolve()
        index = json.loads((export / "model_index.json").read_text())
        assert index["tokenizer"] == ["transformers", tokenizer_class]  # the class transformers loads it as
        assert index["vae"] == ["diffusers", "AutoencoderKLWan"] and index["transformer"][0] == "diffusers"
    stamp = (converted / "vae" / "config.json").stat().st_mtime_ns
    # the run folder moves as a whole
    moved = tmp_path / "moved"
    run.rename(moved)
    assert _same(diffusers.WanPipeline.from_pretrained(moved / "export" / "stage2").vae, load_components(source).vae)
    # the cache is reused, not rewritten
    again = diffusers_components(source, moved / COMPONENTS_DIR)
    assert again == moved / COMPONENTS_DIR / converted.name
    assert (again / "vae" / "config.json").stat().st_mtime_ns == stamp


def test_conversion_keeps_the_stored_dtypes_and_follows_a_changed_source(tmp_path):
    src = write_tiny_wan_dir(tmp_path / "wan", layout="original")
    write_original_text_encoder(tiny_components().text_encoder, src / ORIGINAL_T5, dtype=torch.bfloat16)  # as Wan's
    first = diffusers_components(src, tmp_path / "cache")
    with safe_open(first / "text_encoder" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    with safe_open(first / "vae" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    bf16 = dict(dtype=torch.bfloat16)
    want = load_text_encoder(src / ORIGINAL_T5, layout="original", **bf16)
    assert _same(load_text_encoder(first / "text_encoder", layout="diffusers", **bf16), want)
    write_original_text_encoder(tiny_components(seed=1).text_encoder, src / ORIGINAL_T5)  # a new umT5 file
    second = diffusers_components(src, tmp_path / "cache")
    assert second != first and sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, second.name]
    )


def test_original_layout_stays_available_and_unknown_layouts_are_refused(tmp_path, source):
    model = load_wan(source)
    write_model_dir(tmp_path / "orig", model.state_dict(), ModelCard(), model.config, str(source), layout="original")
    assert find_layout(tmp_path / "orig") == "original"
    assert (tmp_path / "orig" / ORIGINAL_VAE).resolve() == (source / ORIGINAL_VAE).resolve()
    assert not (tmp_path / COMPONENTS_DIR).exists()  # nothing converted
    with pytest.raises(ValueError, match="export layout must be 'diffusers' or 'original', got 'comfy'"):
        write_model_dir(tmp_path / "x", model.state_dict(), ModelCard(), model.config, str(source), layout="comfy")


def test_a_pyrflow_train_export_of_an_original_source_loads_with_wan_pipeline(tmp_path, source):
    cfg = synthetic_run(
        tmp_path / "run",
        model={"config": "", "path": str(source)},
        train={"steps": 1, "samples_per_stage": 1},
        data={"synthetic_size": [5, 8, 8], "synthetic_samples": 4},
        checkpoint={"every": 1, "export": True, "export_layout": "diffusers"},
    )
    Runner(cfg).fit()
    export = tmp_path / "run" / "export"
    pipe = diffusers.WanPipeline.from_pretrained(export)
    assert isinstance(pipe.text_encoder, torch.nn.Module) and (tmp_path / "run" / COMPONENTS_DIR).is_dir()
    want = to_diffusers_state_dict(load_wan(export).state_dict())
    assert all(torch.equal(pipe.transformer.state_dict()[k], v) for k, v in want.items())
