"""Pipeline components (pyrflow_fast.pipeline): layouts, key mappings, strict loading, encoders.

Tiny random components are written in both layouts by ``pipeline_fixtures.write_tiny_wan_dir``;
the two directories hold bit-identical weights, so everything computed from them must be equal.
No third-party warning needed filtering (the suite runs with filterwarnings=error).
"""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from pipeline_fixtures import TINY_TEXT_DIM, tiny_components, write_tiny_wan_dir

from pyrflow_fast.pipeline import (
    MissingFilesError,
    WanComponents,
    check_device,
    find_layout,
    load_components,
)
from pyrflow_fast.pipeline.layout import ORIGINAL_T5, ORIGINAL_VAE, ORIGINAL_VAE_CONFIG
from pyrflow_fast.pipeline.t5_keys import infer_umt5_config, to_hf_t5_state_dict, to_wan_t5_state_dict
from pyrflow_fast.pipeline.vae_keys import (
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    infer_vae_config,
    to_diffusers_vae_state_dict,
    to_original_vae_state_dict,
)
from pyrflow_fast.wan import WanDiT
from pyrflow_fast.wan.checkpoint import CheckpointError, save_wan

PROMPTS = ["a red cat", "the old man is walking in the park at night", "  a   &amp; zebra\n"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    return {layout: write_tiny_wan_dir(root / layout, layout, seed=0) for layout in ("diffusers", "original")}


@pytest.fixture(scope="module")
def comps(dirs):
    return {layout: load_components(path) for layout, path in dirs.items()}


# --------------------------------------------------------------------------- key mappings
def test_vae_mapping_matches_diffusers_converter_on_wan_config():
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        vae = AutoencoderKLWan()  # Wan2.1's VAE: base_dim 96, z_dim 16
    sd = vae.state_dict()
    original = to_original_vae_state_dict(sd, num_res_blocks=2)
    assert len(original) == len(sd)
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.middle.1.to_qkv.weight" in original
    # diffusers' own (hard-coded) converter maps our original names back to the same keys.
    converted = convert_wan_vae_to_diffusers(original)
    assert converted.keys() == sd.keys() and all(converted[k] is sd[k] for k in sd)
    assert to_diffusers_vae_state_dict(original, num_res_blocks=2).keys() == sd.keys()
    cfg = infer_vae_config(original)
    assert cfg == {
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attn_scales": [], "temperal_downsample": [False, True, True],
    }  # fmt: skip


def test_t5_mapping_on_umt5_xxl_shapes():
    from transformers import UMT5Config, UMT5EncoderModel

    xxl = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")  # fmt: skip
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**xxl))
    sd = model.state_dict()
    wan = to_wan_t5_state_dict(sd)
    # Wan's T5Encoder: embedding, 24 blocks x 10 tensors, final norm.
    assert len(wan) == 1 + 24 * 10 + 1
    assert {k for k in wan if k.startswith("blocks.23.")} == {
        f"blocks.23.{n}.weight"
        for n in ("norm1", "attn.q", "attn.k", "attn.v", "attn.o", "pos_embedding.embedding", "norm2",
                  "ffn.gate.0", "ffn.fc1", "ffn.fc2")
    }  # fmt: skip
    assert to_hf_t5_state_dict(wan).keys() == sd.keys()
    inferred = infer_umt5_config(wan)
    assert {k: inferred[k] for k in xxl} == xxl


def _wan_t5_reference(sd, ids, mask, eps=1e-6, max_dist=128):
    """umT5 encoder written from the maths of Wan's wan/modules/t5.py, on Wan-named weights."""
    heads_buckets = sd["blocks.0.pos_embedding.embedding.weight"]
    buckets, heads = heads_buckets.shape
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    length = ids.shape[1]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = buckets // 2
    exact = half // 2
    dist = rel.abs()
    large = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(dist < exact, dist, large.clamp(max=half - 1))

    x = F.embedding(ids, sd["token_embedding.weight"])
    b = ids.shape[0]
    for i in range(n_blocks):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(b, length, heads, -1) for n in "qkv")
        bias = F.embedding(bucket, sd[p + "pos_embedding.embedding.weight"]).permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) + bias, dim=-1)
        x = x + F.linear(torch.einsum("bhij,bjhd->bihd", attn, v).reshape(b, length, -1), sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gelu_tanh(F.linear(h, sd[p + "ffn.gate.0.weight"])),
                         sd[p + "ffn.fc2.weight"])  # fmt: skip
    return rms(x, sd["norm.weight"])


def test_t5_mapping_semantics_match_wan_maths():
    c = tiny_components(seed=1)
    sd = to_wan_t5_state_dict(c.text_encoder.state_dict())
    tokens = c.tokenizer(["a red cat", "the dog is running in the park"], padding="max_length", max_length=12,
                         return_tensors="pt")  # fmt: skip
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    with torch.no_grad():
        ours = c.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = _wan_t5_reference(sd, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], rtol=1e-4, atol=1e-5)
    # The check is sensitive to the gate/fc1 assignment.
    swapped = dict(sd)
    for i in range(2):
        swapped[f"blocks.{i}.ffn.gate.0.weight"], swapped[f"blocks.{i}.ffn.fc1.weight"] = (
            sd[f"blocks.{i}.ffn.fc1.weight"], sd[f"blocks.{i}.ffn.gate.0.weight"])  # fmt: skip
    with torch.no_grad():
        assert not torch.allclose(_wan_t5_reference(swapped, ids, mask)[valid], ref[valid], atol=1e-3)


# ------------------------------------------------------------------------------- layouts
def test_find_layout(dirs):
    assert find_layout(dirs["diffusers"]) == "diffusers"
    assert find_layout(dirs["original"]) == "original"


def test_both_layouts_load_bit_identical(comps):
    a, b = comps["diffusers"], comps["original"]
    assert isinstance(a, WanComponents) and (a.layout, b.layout) == ("diffusers", "original")
    assert a.text_len == b.text_len == 512 and a.text_dim == TINY_TEXT_DIM and a.z_dim == 16
    for name in ("text_encoder", "vae", "transformer"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert isinstance(a.transformer, WanDiT) and a.transformer.config.text_dim == TINY_TEXT_DIM
    assert a.transformer.config.in_dim == a.vae.config.z_dim
    ea, eb = a.encode_prompt(PROMPTS), b.encode_prompt(PROMPTS)
    assert torch.equal(ea, eb)
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    za, zb = a.encode_video(video), b.encode_video(video)
    assert torch.equal(za, zb)
    assert torch.equal(a.decode_latents(za), b.decode_latents(zb))


def test_loaded_equals_written_components(comps):
    ref = tiny_components(seed=0)
    for name in ("text_encoder", "vae", "transformer"):
        sd_ref, sd = getattr(ref, name).state_dict(), getattr(comps["original"], name).state_dict()
        assert all(torch.equal(sd_ref[k], sd[k]) for k in sd_ref), name


# ------------------------------------------------------------------------------ prompts
def test_encode_prompt_pads_with_zeros(comps):
    c = comps["original"]
    emb = c.encode_prompt(PROMPTS)
    assert emb.shape == (3, 512, TINY_TEXT_DIM) and emb.dtype == torch.float32
    # true lengths: words (after cleaning) + </s>
    lengths = [4, 11, 4]
    for i, n in enumerate(lengths):
        assert (emb[i, :n].abs().sum(-1) > 0).all()
        assert not emb[i, n:].any()
    # the kept positions are the encoder's output run with the attention mask
    ids = torch.zeros(1, 512, dtype=torch.long)
    ids[0, :4] = torch.tensor(c.tokenizer("a red cat")["input_ids"])
    mask = (torch.arange(512) < 4).long()[None]
    with torch.no_grad():
        hidden = c.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(emb[0, :4], hidden[0, :4])
    # a single string works; prompts longer than text_len are truncated (no zero rows left)
    assert torch.equal(c.encode_prompt("a red cat"), emb[:1])
    long = c.encode_prompt(["cat " * 600])
    assert long.shape == (1, 512, TINY_TEXT_DIM) and (long[0].abs().sum(-1) > 0).all()


# --------------------------------------------------------------------------------- video
def test_encode_decode_shapes_and_normalisation(comps):
    c = comps["diffusers"]
    video = torch.rand(2, 3, 5, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = c.encode_video(video)
    assert z.shape == (2, 16, 2, 2, 3) and z.dtype == torch.float32
    assert c.latent_size(5, 16, 24) == (2, 2, 3) and c.stride == (4, 8, 8)
    with torch.no_grad():
        mu = c.vae.encode(video).latent_dist.mean
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    assert torch.equal(z, (mu - mean) * (1.0 / std))  # Wan's / diffusers' exact form
    torch.testing.assert_close(z, (mu - mean) / std, rtol=1e-6, atol=1e-6)
    out = c.decode_latents(z)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    with torch.no_grad():
        expected = c.vae.decode(z / (1.0 / std) + mean).sample
    assert torch.equal(out, expected.clamp(-1, 1))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        c.encode_video(video[:, :, :4])
    with pytest.raises(ValueError, match="multiples of 8"):
        c.encode_video(video[..., :12])
    with pytest.raises(ValueError, match="B, 16"):
        c.decode_latents(z[:, :4])


def test_small_z_dim_reads_latent_stats_from_config(tmp_path):
    orig = write_tiny_wan_dir(tmp_path / "orig", "original", seed=2, z_dim=4)
    diff = write_tiny_wan_dir(tmp_path / "diff", "diffusers", seed=2, z_dim=4)
    sidecar = json.loads((orig / ORIGINAL_VAE_CONFIG).read_text())
    a, b = load_components(diff, transformer=False), load_components(orig, transformer=False)
    assert list(a.vae.config.latents_mean) == sidecar["latents_mean"] == list(b.vae.config.latents_mean)
    video = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    za = a.encode_video(video)
    assert za.shape == (1, 4, 2, 1, 1) and torch.equal(za, b.encode_video(video))
    mean, std = a.latent_stats()
    with torch.no_grad():
        mu = a.vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(za, (mu - mean) / std, rtol=1e-6, atol=1e-6)
    (orig / ORIGINAL_VAE_CONFIG).unlink()
    with pytest.raises(ValueError, match="latents_mean and latents_std"):
        load_components(orig, transformer=False)


# -------------------------------------------------------------------------------- errors
def test_missing_files_are_listed(dirs, tmp_path):
    orig = shutil.copytree(dirs["original"], tmp_path / "orig")
    (orig / ORIGINAL_VAE).unlink()
    with pytest.raises(MissingFilesError) as err:
        load_components(orig)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "original layout is missing: Wan2.1_VAE.pth" in msg
    assert "diffusers:" in msg and "original:" in msg and "text_encoder/" in msg  # both layouts described

    diff = shutil.copytree(dirs["diffusers"], tmp_path / "diff")
    (diff / "vae" / "config.json").unlink()
    shutil.rmtree(diff / "transformer")
    with pytest.raises(MissingFilesError, match="vae/config.json, transformer/config.json"):
        find_layout(diff)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFilesError) as err:
        find_layout(tmp_path / "empty")
    assert "diffusers layout is missing" in str(err.value) and "original layout is missing" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_layout(tmp_path / "nowhere")


def test_transformer_optional(dirs, tmp_path):
    orig = shutil.copytree(dirs["original"], tmp_path / "orig")
    (orig / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingFilesError, match="diffusion_pytorch_model"):
        find_layout(orig)
    assert find_layout(orig, transformer=False) == "original"
    c = load_components(orig, transformer=False)
    assert c.transformer is None and c.encode_prompt(["a cat"]).shape == (1, 512, TINY_TEXT_DIM)


def test_wrong_device_is_a_clear_error(dirs):
    with pytest.raises(ValueError, match="invalid device 'cdua'"):
        load_components(dirs["original"], device="cdua")
    with pytest.raises(ValueError, match="invalid device"):
        check_device("cpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_components(dirs["original"], device="cuda")
    assert check_device("cpu") == torch.device("cpu")


def test_strict_loading_lists_key_problems(dirs, tmp_path):
    orig = shutil.copytree(dirs["original"], tmp_path / "orig")
    sd = torch.load(orig / ORIGINAL_T5, weights_only=True)
    sd.pop("blocks.1.norm2.weight")
    sd["blocks.1.extra.weight"] = torch.zeros(3)
    torch.save(sd, orig / ORIGINAL_T5)
    with pytest.raises(CheckpointError) as err:
        load_components(orig, transformer=False)
    msg = str(err.value)
    assert "text encoder" in msg and "1 missing keys: encoder.block.1.layer.1.layer_norm.weight" in msg
    assert "1 unexpected keys: blocks.1.extra.weight" in msg

    diff = shutil.copytree(dirs["diffusers"], tmp_path / "diff")
    cfg = json.loads((diff / "vae" / "config.json").read_text())
    cfg["base_dim"] = 8
    (diff / "vae" / "config.json").write_text(json.dumps(cfg))
    expected = "VAE .*shape mismatches: decoder.conv_in.bias \\(checkpoint \\(8,\\), model \\(16,\\)\\)"
    with pytest.raises(CheckpointError, match=expected):
        load_components(diff, transformer=False)


def test_mismatched_transformer_is_an_error(dirs, tmp_path):
    orig = shutil.copytree(dirs["original"], tmp_path / "orig")
    save_wan(WanDiT("tiny"), orig, layout="original")  # text_dim 16 but in_dim 4
    with pytest.raises(ValueError, match="in_dim 4 != VAE z_dim 16"):
        load_components(orig)


def test_bf16_text_encoder_file_and_per_component_dtype(dirs, comps, tmp_path):
    orig = shutil.copytree(dirs["original"], tmp_path / "orig")
    from pyrflow_fast.pipeline import write_original_text_encoder

    write_original_text_encoder(comps["original"].text_encoder, orig / ORIGINAL_T5, dtype=torch.bfloat16)
    c = load_components(orig, transformer=False, text_encoder_dtype=torch.bfloat16)
    stored = torch.load(orig / ORIGINAL_T5, weights_only=True)
    assert stored["blocks.0.ffn.gate.0.weight"].dtype == torch.bfloat16
    loaded = c.text_encoder.state_dict()["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, stored["blocks.0.ffn.gate.0.weight"])
    assert next(c.vae.parameters()).dtype == torch.float32
    emb = c.encode_prompt(PROMPTS[:1])
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, comps["original"].encode_prompt(PROMPTS[:1]), rtol=0.1, atol=0.1)
