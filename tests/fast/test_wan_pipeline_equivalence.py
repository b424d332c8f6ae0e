"""``pyrflow-sample --solver unipc`` on a plain schedule equals diffusers' own ``WanPipeline``.

The model folder is written by ``WanPipeline.save_pretrained`` from diffusers' and transformers'
own classes (tiny random ``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``, a
word-level tokenizer) with Wan's ``UniPCMultistepScheduler``. Both sides draw the starting noise
``(B, C, F, H, W)`` with ``torch.randn`` from a CPU generator seeded alike (diffusers'
``randn_tensor``), and both return latents in Wan's *normalised* space: ``WanPipeline(...,
output_type="latent")`` returns the sampler's latents before it un-normalises them for the VAE, and
pyrflow's ``--save-latents`` writes the sampler's latents, so they are compared as they are.
"""

import hashlib

import pytest
import torch
from pipeline_fixtures import TINY_TEXT_DIM, tiny_tokenizer
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from pyrflow_fast.request import WAN_NEGATIVE_PROMPT  # noqa: E402
from pyrflow_fast.sample import main  # noqa: E402
from pyrflow_fast.solvers import WAN_SCHEDULER_CONFIG  # noqa: E402

PROMPT = "a red car on a street at sunset"
SEED, STEPS, GUIDANCE = 7, 10, 5.0
FRAMES, HEIGHT, WIDTH = 9, 32, 48


def _randomize(module, gen, scale=0.3):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale * max(p[0].numel(), 1) ** -0.5 * 4)


def _folder_hash(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    t5 = transformers.UMT5EncoderModel(
        transformers.UMT5Config(
            vocab_size=64, d_model=TINY_TEXT_DIM, d_kv=4, num_heads=4, d_ff=32, num_layers=2,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        )
    ).eval()  # fmt: skip
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=1024,
    ).eval()  # fmt: skip
    for module in (t5, vae, transformer):
        _randomize(module, gen)
    pipe = diffusers.WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=t5,
        transformer=transformer,
        vae=vae,
        scheduler=diffusers.UniPCMultistepScheduler.from_config(WAN_SCHEDULER_CONFIG),
    )
    root = tmp_path_factory.mktemp("wan") / "Wan2.1-tiny-Diffusers"
    pipe.save_pretrained(root)
    return pipe, root


def test_cli_unipc_equals_diffusers_wan_pipeline(wan_folder, tmp_path, capsys):
    pipe, root = wan_folder
    before = _folder_hash(root)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=PROMPT,
        negative_prompt=WAN_NEGATIVE_PROMPT,  # diffusers' default is "", Wan's (and pyrflow's) this one
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
    ).frames
    argv = ["--model-dir", str(root), "--prompt", PROMPT, "--schedule", f"0-0-{STEPS}", "--solver", "unipc"]
    argv += ["--guidance-scale", str(GUIDANCE), "--seed", str(SEED), "--frames", str(FRAMES), "--height", str(HEIGHT)]
    argv += ["--width", str(WIDTH), "--dtype", "float32", "--device", "cpu", "--no-progress"]
    argv += ["--out", str(tmp_path / "v.gif"), "--save-latents", str(tmp_path / "z.safetensors")]
    assert main(argv) == 0
    assert f"unipc 0-0-{STEPS} ({FRAMES}x{HEIGHT}x{WIDTH}, seed {SEED}" in capsys.readouterr().err
    ours = load_file(str(tmp_path / "z.safetensors"))["latents"]
    assert ours.shape == theirs.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    rel = float((ours - theirs).norm() / theirs.norm())
    assert rel <= 1e-4, rel
    # the default solver of a plain schedule on this folder is its UniPC scheduler too
    argv[argv.index("--solver") + 1] = "auto"
    assert main(argv) == 0
    assert torch.equal(load_file(str(tmp_path / "z.safetensors"))["latents"], ours)
    assert _folder_hash(root) == before  # pyrflow wrote nothing into the model folder
