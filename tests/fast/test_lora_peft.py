"""LoRA through peft: files written by peft/diffusers load into pyrflow, pyrflow's files load into diffusers,
per-stage LoRA sampling equals the per-stage merged checkpoints, and bad files fail with clear errors."""

import json

import pytest
import torch
from wan_fixtures import random_wan, wan_inputs

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pyrflow_fast.card import ModelCard  # noqa: E402
from pyrflow_fast.contract import BackboneDenoiser, WanBackbone  # noqa: E402
from pyrflow_fast.lora_formats import read_lora_file, save_lora_file  # noqa: E402
from pyrflow_fast.samplers import guided, sample_euler  # noqa: E402
from pyrflow_fast.train.lora import (  # noqa: E402
    LoRA,
    load_card_lora,
    stage_lora_file,
    stage_models,
    write_lora_export,
)
from pyrflow_fast.wan.checkpoint import load_wan  # noqa: E402
from pyrflow_fast.wan.keys import to_diffusers_state_dict  # noqa: E402

DIFFUSERS_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]
"""peft ``target_modules`` on diffusers' WanTransformer3DModel matching pyrflow's TARGETS."""
REL = 1e-5
REL_DIFFUSERS = 5e-5  # float32, another operation order (diffusers folds a ComfyUI alpha into A and B)


def _diffusers_twin(ours):
    kwargs = {k: v for k, v in ours.config.to_diffusers_dict().items() if not k.startswith("_")}
    theirs = diffusers.WanTransformer3DModel.from_config(kwargs).eval()
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    return theirs


def _pipe(theirs):
    """A WanPipeline around ``theirs`` (no VAE or text encoder: only its LoRA loader is used)."""
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    return diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=theirs)


def _randomize(lora, seed, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def inputs():
    cfg = random_wan("tiny").config
    x, _, _ = wan_inputs(cfg, (3, 4, 4), batch=2, seed=1)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(2))
    return x, torch.tensor([700.0, 300.0]), ctx  # as diffusers' model takes: one timestep per sample, full context


def _ours(x, t, ctx, model):
    with torch.no_grad():
        return model(x, t, ctx)


def _theirs(x, t, ctx, model):
    with torch.no_grad():
        return model(x, t, ctx, return_dict=False)[0]


# ------------------------------------------------------------------------ diffusers / peft -> pyrflow
@pytest.mark.parametrize(("rank", "alpha", "metadata"), [(2, 6.0, True), (3, 3.0, False)])
def test_a_lora_saved_by_diffusers_loads_into_pyrflow(tmp_path, inputs, rank, alpha, metadata):
    ours = random_wan("tiny", seed=2)
    theirs = _diffusers_twin(ours)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=DIFFUSERS_TARGETS, init_lora_weights=False)
    torch.manual_seed(7)
    theirs.add_adapter(config)  # peft's nn.Linear init: A and B both non-zero
    diffusers.WanPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(theirs),
        transformer_lora_adapter_metadata=config.to_dict() if metadata else None,
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert next(iter(load_file(path))).startswith("transformer.blocks.")

    lora = LoRA.from_files(ours, [path])
    assert (lora.rank, lora.alpha, lora.num_sets) == (rank, alpha, 1)
    x, t, ctx = inputs
    base = _ours(x, t, ctx, random_wan("tiny", seed=2))
    a, b = _ours(x, t, ctx, ours), _theirs(x, t, ctx, theirs)
    assert _rel(a, base) > 1e-2  # the adapter acts
    assert _rel(a, b) <= REL_DIFFUSERS
    if not metadata:  # peft's own state dict, saved as it is: no prefix, no alpha (alpha = rank)
        save_file(get_peft_model_state_dict(theirs), str(tmp_path / "peft.safetensors"))
        lora.remove()
        LoRA.from_files(ours, [tmp_path / "peft.safetensors"])
        assert _rel(_ours(x, t, ctx, ours), b) <= REL_DIFFUSERS


def test_a_comfyui_lora_loads_into_pyrflow_like_diffusers_loads_it(tmp_path, inputs):
    """ComfyUI's ``diffusion_model.`` form (Wan's names) in both of its spellings, ``lora_A``/``lora_B`` and
    ``lora_down``/``lora_up`` with ``.alpha``: pyrflow and diffusers' own converter read the same LoRA."""
    ours = random_wan("tiny", seed=3)
    lora = LoRA(ours, rank=2, alpha=8.0)
    _randomize(lora, 1)
    comfy = lora.save(tmp_path / "comfy.safetensors", form="comfyui")
    sd = load_file(comfy)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in sd
    assert float(sd["diffusion_model.blocks.1.ffn.2.alpha"]) == 8.0
    down_up = {k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v for k, v in sd.items()}
    save_file(down_up, str(tmp_path / "down_up.safetensors"))
    x, t, ctx = inputs
    want = _ours(x, t, ctx, ours)
    lora.remove()
    for name in ("comfy", "down_up"):
        path = tmp_path / f"{name}.safetensors"
        fresh = random_wan("tiny", seed=3)
        loaded = LoRA.from_files(fresh, [path])
        assert (loaded.rank, loaded.alpha) == (2, 8.0)
        assert _rel(_ours(x, t, ctx, fresh), want) <= REL
        pipe = _pipe(_diffusers_twin(random_wan("tiny", seed=3)))
        pipe.load_lora_weights(path)
        assert _rel(_theirs(x, t, ctx, pipe.transformer), want) <= REL_DIFFUSERS


# ------------------------------------------------------------------------ pyrflow -> diffusers
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")  # peft: 2nd adapter
def test_per_stage_lora_files_load_into_diffusers_as_named_adapters(tmp_path, inputs):
    ours = random_wan("tiny", seed=4)
    pipe = _pipe(_diffusers_twin(ours))
    lora = LoRA(ours, rank=2, alpha=5.0, num_sets=3)
    assert lora.adapter_names == ("stage0", "stage1", "stage2")
    _randomize(lora, 2)
    for i in range(3):
        path = lora.save(tmp_path / stage_lora_file(i), i)
        meta = json.loads(safe_open(str(path), "pt").metadata()["lora_adapter_metadata"])
        assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (2, 5.0)
        pipe.load_lora_weights(tmp_path, weight_name=stage_lora_file(i), adapter_name=f"stage{i}")
    x, t, ctx = inputs
    outs = []
    for i in (2, 0, 1):
        lora.select(i)
        pipe.set_adapters(f"stage{i}")
        outs.append(_ours(x, t, ctx, ours))
        assert _rel(outs[-1], _theirs(x, t, ctx, pipe.transformer)) <= REL_DIFFUSERS
    assert _rel(outs[0], outs[1]) > 1e-3  # the stages' adapters differ


def test_read_back_what_pyrflow_writes_in_both_forms(tmp_path):
    model = random_wan("tiny", seed=5)
    lora = LoRA(model, rank=3, alpha=1.5, num_sets=2)
    _randomize(lora, 3)
    want = lora.stage_tensors(1)
    for form in ("diffusers", "comfyui"):
        got = read_lora_file(lora.save(tmp_path / f"{form}.safetensors", 1, form=form), lora.names)
        assert (got.rank, got.alpha) == (3, 1.5)
        assert sorted(got.tensors) == sorted(want)
        for name, (a, b) in want.items():
            assert torch.equal(got.tensors[name][0], a) and torch.equal(got.tensors[name][1], b)


# ------------------------------------------------------------------------ sampling and exports
def _sample(models, card, seed=0, guidance=None, uncond=None):
    pyramid, plan = card.pyramid(), card.plan("2-1-2", shift=3.0)
    noise_shape = pyramid.shapes((1, 4, 5, 16, 16))[plan.top]
    noise = torch.randn(noise_shape, generator=torch.Generator().manual_seed(seed))
    ctx = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(seed + 1))
    if guidance is not None:
        models = [guided(m, guidance, uncond=uncond) for m in models]
    with torch.no_grad():
        return sample_euler(
            models, noise, pyramid, plan.windows, plan, cond=ctx, shift=3.0, rng=torch.Generator().manual_seed(9)
        )


def test_per_stage_lora_export_samples_like_the_merged_stage_checkpoints(tmp_path):
    """write_lora_export's per-stage folder: the base plus one LoRA file per stage in its card; sampled with the
    adapter switched at every stage transition it equals sampling with each stage's merged checkpoint."""
    base = random_wan("tiny", seed=6, std=0.1)
    lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
    _randomize(lora, 4, std=0.3)
    card = ModelCard(kind="pyramidal")
    written = write_lora_export(tmp_path / "export", lora, base.state_dict(), card, base.config, layout="diffusers")
    assert [p.name for p in written] == [stage_lora_file(i) for i in range(3)]
    export_card = ModelCard.load(tmp_path / "export")
    assert export_card.lora_files == tuple(stage_lora_file(i) for i in range(3))

    transformer = load_wan(tmp_path / "export")
    loaded = load_card_lora(tmp_path / "export", transformer)
    assert loaded.num_sets == 3
    switched = stage_models(BackboneDenoiser(WanBackbone(transformer), lora=loaded), 3)
    merged = [BackboneDenoiser(WanBackbone(load_wan(tmp_path / "export" / f"stage{i}"))) for i in range(3)]
    assert ModelCard.load(tmp_path / "export" / "stage0").lora_files == ()
    uncond = torch.zeros(1, 5, 16)
    a, b = _sample(switched, card, guidance=3.0, uncond=uncond), _sample(merged, card, guidance=3.0, uncond=uncond)
    assert _rel(a, b) <= 1e-5
    only0 = _sample([merged[0]] * 3, card, guidance=3.0, uncond=uncond)
    assert _rel(only0, b) > 1e-4  # the coarse stages' adapters matter


def test_shared_lora_export_is_merged_plus_the_adapter_for_the_base(tmp_path, inputs):
    base = random_wan("tiny", seed=7)
    lora = LoRA(base, rank=2)
    _randomize(lora, 5)
    x, t, ctx = inputs
    want = _ours(x, t, ctx, base)
    write_lora_export(tmp_path / "export", lora, base.state_dict(), ModelCard(), base.config)
    assert ModelCard.load(tmp_path / "export").lora_files == ()  # merged: nothing to apply on top
    assert _rel(_ours(x, t, ctx, load_wan(tmp_path / "export")), want) <= REL
    fresh = random_wan("tiny", seed=7)
    LoRA.from_files(fresh, [tmp_path / "export" / "lora" / "pytorch_lora_weights.safetensors"])
    assert _rel(_ours(x, t, ctx, fresh), want) <= REL
    assert stage_models(BackboneDenoiser(WanBackbone(fresh), lora=lora), 3).lora is lora  # shared: one model


def test_stage_models_needs_one_adapter_per_stage():
    lora = LoRA(random_wan("tiny"), rank=2, num_sets=2)
    with pytest.raises(ValueError, match="2 adapters cannot sample 3 stages"):
        stage_models(BackboneDenoiser(WanBackbone(random_wan("tiny")), lora=lora), 3)
    with pytest.raises(IndexError, match="stage 2 has no LoRA adapter"):
        lora.select(2)


def test_lora_trains_every_stage_adapter():
    lora = LoRA(random_wan("tiny").requires_grad_(False), rank=2, num_sets=3)
    assert all(p.requires_grad for p in lora.parameters())  # peft would freeze the inactive adapters
    assert sorted({k.split(".")[3] for k in lora.state_dict()}) == ["stage0", "stage1", "stage2"]


# ------------------------------------------------------------------------ bad input
def test_keys_that_match_no_layer_are_listed_with_the_expected_form(tmp_path):
    model = random_wan("tiny")
    good = LoRA(model, rank=2).save(tmp_path / "good.safetensors")
    sd = load_file(good)
    sd["transformer.blocks.7.attn1.to_q.lora_A.weight"] = torch.zeros(2, 32)  # the model has 2 blocks
    sd["text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"] = torch.zeros(2, 32)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as err:
        LoRA(random_wan("tiny"), rank=2).load(tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "2 keys match no adapted layer" in msg and "'transformer.blocks.7.attn1.to_q.lora_A.weight'" in msg
    assert "'text_encoder.encoder.block.0" in msg and "expected LoRA keys like 'transformer.blocks.0.attn1" in msg
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="1 keys match no adapted layer.*'foo.weight'"):
        read_lora_file(tmp_path / "none.safetensors", LoRA(random_wan("tiny"), rank=1).names)


def test_rank_and_alpha_mismatches_are_named(tmp_path):
    model = random_wan("tiny")
    path = LoRA(model, rank=2, alpha=4.0).save(tmp_path / "r2.safetensors")
    with pytest.raises(ValueError, match=r"LoRA rank 2, but this LoRA has rank 4; create it with rank=2"):
        LoRA(random_wan("tiny"), rank=4, alpha=4.0).load(path)
    with pytest.raises(ValueError, match=r"LoRA alpha 4, but this LoRA has alpha 2; create it with alpha=4"):
        LoRA(random_wan("tiny"), rank=2).load(path)
    sd = load_file(path)
    sd["transformer.blocks.1.attn2.to_k.lora_A.weight"] = torch.zeros(3, 32)
    sd["transformer.blocks.1.attn2.to_k.lora_B.weight"] = torch.zeros(32, 3)
    save_file(sd, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(ValueError, match=r"different LoRA ranks \(rank 2: .*; rank 3: \['blocks.1.cross_attn.k'\]"):
        read_lora_file(tmp_path / "mixed.safetensors")
    del sd["transformer.blocks.1.attn2.to_k.lora_B.weight"]
    save_file(sd, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match=r"only one of A .* \['blocks.1.cross_attn.k'\]"):
        read_lora_file(tmp_path / "half.safetensors")
    tensors = {"blocks.0.ffn.0": (torch.zeros(2, 32), torch.zeros(64, 2))}
    save_lora_file(tmp_path / "c.safetensors", tensors, 2, 1.0, form="comfyui")
    sd = load_file(tmp_path / "c.safetensors")
    sd["diffusion_model.blocks.0.ffn.2.lora_A.weight"] = torch.zeros(2, 64)
    sd["diffusion_model.blocks.0.ffn.2.lora_B.weight"] = torch.zeros(32, 2)
    sd["diffusion_model.blocks.0.ffn.2.alpha"] = torch.tensor(3.0)
    save_file(sd, str(tmp_path / "alphas.safetensors"))
    with pytest.raises(ValueError, match=r"different LoRA alphas \[1.0, 3.0\]"):
        read_lora_file(tmp_path / "alphas.safetensors")
    with pytest.raises(ValueError, match="unknown LoRA file form 'kohya'"):
        save_lora_file(tmp_path / "k.safetensors", tensors, 2, 1.0, form="kohya")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_a_partial_lora_leaves_the_other_layers_unchanged(tmp_path, inputs):
    """Many Wan LoRAs adapt the attention only: the FFN adapters then stay at B = 0."""
    model = random_wan("tiny", seed=8)
    lora = LoRA(model, rank=2)
    _randomize(lora, 6)
    tensors = {n: ab for n, ab in lora.stage_tensors(0).items() if "attn" in n}
    save_lora_file(tmp_path / "attn.safetensors", tensors, 2, 2.0)
    with torch.no_grad():
        for i, name in enumerate(lora.names):
            if "attn" not in name:
                lora.layers[i].lora_B["default"].weight.zero_()
    x, t, ctx = inputs
    want = _ours(x, t, ctx, model)
    fresh = random_wan("tiny", seed=8)
    loaded = LoRA.from_files(fresh, [tmp_path / "attn.safetensors"])
    assert _rel(_ours(x, t, ctx, fresh), want) <= REL
    assert not any(loaded.layers[i].lora_B["default"].weight.any() for i in range(8, 10))  # block 0's FFN


def test_card_lora_files_are_one_or_one_per_stage():
    assert ModelCard(lora_files=["a.safetensors"]).lora_files == ("a.safetensors",)
    with pytest.raises(ValueError, match="one LoRA file \\(shared\\) or 3 \\(one per stage\\), got 2"):
        ModelCard(lora_files=("a", "b"))


def test_generate_switches_a_per_stage_lora_like_the_merged_stage_checkpoints(tmp_path):
    """``generate(lora=load_card_lora(...))`` on a per-stage LoRA export (what pyrflow-sample and the
    pipeline do) equals the pyramidal sampler over the export's merged ``stage{i}`` checkpoints."""
    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.pipeline import load_components
    from pyrflow_fast.sample import generate

    source = write_tiny_wan_dir(tmp_path / "wan")
    base = load_wan(source)
    lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
    _randomize(lora, 5, std=0.3)
    card = ModelCard(kind="pyramidal")
    write_lora_export(tmp_path / "export", lora, base.state_dict(), card, base.config, source_path=source)
    components = load_components(tmp_path / "export")
    loaded = load_card_lora(tmp_path / "export", components.transformer)
    cfg = components.transformer.config
    gen = torch.Generator().manual_seed(4)
    cond, uncond = (torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen) for _ in range(2))
    plan = ModelCard.load(tmp_path / "export").plan("2-1-2", shift=3.0)
    latents = torch.randn(1, components.z_dim, 2, 2, 2, generator=gen)  # the coarsest stage of a 5x8x8 latent
    options = dict(schedule=plan, shift=3.0, guidance_scale=3.0, seed=7, frames=17, height=64, width=64, progress=False)
    result = generate(
        components, card=ModelCard.load(tmp_path / "export"), lora=loaded, latents=latents, prompt_embeds=cond,
        negative_prompt_embeds=uncond, **options,
    )  # fmt: skip
    merged = [
        guided(
            BackboneDenoiser(WanBackbone(load_wan(tmp_path / "export" / f"stage{i}")), full_size=(5, 8, 8)), 3.0, uncond
        )
        for i in range(3)
    ]
    with torch.no_grad():
        want = sample_euler(
            merged,
            latents,
            card.pyramid(),
            plan.windows,
            plan,
            cond=cond,
            shift=3.0,
            rng=torch.Generator().manual_seed(7),
        )
    assert _rel(result.latents, want) <= REL
