"""The 14B path on gloo: a scaled Wan2.1-T2V-14B samples on 2 and 4 ranks as in one process.

The scaled config keeps the 14B's head dim (128) and FFN ratio (2.7), with 5 heads (split unevenly
by Ulysses on 2 and 4 ranks) and 2 layers. It is written into a diffusers directory next to the tiny
text encoder and VAE (diffusers' and transformers' own writers). Every rank loads it with
:func:`~pyrflow_fast.pipeline.load_components` and the text encoder on the CPU (``text_encoder_device``,
the CLI's ``--t5-cpu``), shards its blocks with :func:`~pyrflow_fast.parallel.shard_blocks` (FSDP2) and
samples it through :class:`~pyrflow_fast.parallel.ContextParallelWan`; the one-process reference is
sampled before sharding on rank 0 only (the test machine's CPUs are shared) and broadcast. Rank 0
writes the largest error of each check.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from pyrflow_fast.wan.config import get_config

FULL = (5, 8, 24)  # latent; the Wan pyramid's stages have 48, 12 and 3 tokens per frame (patch 1x2x2)
TEXT_LEN = 32
SAMPLE_TOL = 1e-5  # float32, relative to the largest entry
FSDP_SLACK = 0.02  # the largest share of the blocks' weights a rank may store beyond 1/N
CASES = {"20-20-10": 5.0, "2-2-1": None}  # schedule: guidance scale (Euler with CFG), or None (few-step)
RUNS = [("20-20-10", "ulysses"), ("2-2-1", "ulysses"), ("2-2-1", "ring")]  # (schedule, method) sampled sharded


def scaled_14b(text_dim: int):
    """Wan2.1-T2V-14B's shape family at 1/8 of the heads and width, 2 layers, the tiny encoder's ``text_dim``."""
    big = get_config("wan2.1-t2v-14b")
    heads = big.num_heads // 8
    return big.replace(
        dim=heads * big.head_dim, ffn_dim=big.ffn_dim // 8, num_heads=heads, num_layers=2, text_dim=text_dim,
        text_len=TEXT_LEN,
    )  # fmt: skip


def _scaled_model():
    from pipeline_fixtures import TINY_TEXT_DIM
    from wan_fixtures import random_wan

    return random_wan(scaled_14b(TINY_TEXT_DIM), seed=3, std=0.05)


def _worker(model_dir: str, path: str) -> None:
    """Every check on this rank; rank 0 writes ``{check: largest value over the ranks}``."""
    import contextlib

    import torch.distributed as dist
    from test_context_parallel import Report

    from pyrflow_fast.contract import BackboneDenoiser, WanBackbone
    from pyrflow_fast.parallel import ContextParallelWan, ParallelPlan, shard_blocks
    from pyrflow_fast.resample import WAN_PYRAMID
    from pyrflow_fast.samplers import guided, sample_euler, sample_few_step
    from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

    report = Report()
    record, world = report.record, dist.get_world_size()

    if model_dir == "-":  # the same transformer built in place, without the pipeline's (CPU-costly) imports
        model = _scaled_model()
        gen = torch.Generator().manual_seed(7)
        cond, uncond = (torch.randn(1, TEXT_LEN, model.config.text_dim, generator=gen) for _ in range(2))
    else:
        from pyrflow_fast.pipeline import load_components

        components = load_components(model_dir, text_len=TEXT_LEN, text_encoder_device="cpu")
        model = components.transformer
        record("text_encoder_not_on_cpu", float(next(components.text_encoder.parameters()).device.type != "cpu"))
        with torch.no_grad():
            cond, uncond = components.encode_prompt(["a red car"]), components.encode_prompt([""])
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    noise = torch.randn(1, model.config.in_dim, *WAN_PYRAMID.shapes((1, 1, *FULL))[2][2:],
                        generator=torch.Generator().manual_seed(11))  # fmt: skip

    def run(net, schedule, guidance_scale):
        """The sampled latents of ``net`` for ``schedule`` from fixed noise and transition noise."""
        denoiser = BackboneDenoiser(WanBackbone(net), full_size=FULL)
        rng = torch.Generator().manual_seed(5)
        with torch.no_grad(), net.text_cache() if net is model else contextlib.nullcontext():
            if guidance_scale is None:
                return sample_few_step(denoiser, noise, WAN_PYRAMID, windows, schedule, cond=cond, shift=5.0, rng=rng)
            g = guided(denoiser, guidance_scale, uncond=uncond)
            return sample_euler(g, noise, WAN_PYRAMID, windows, schedule, cond=cond, shift=5.0, rng=rng)

    reference = {}
    for schedule, scale in CASES.items():  # computed once, on rank 0, so the other ranks leave the CPUs to it
        reference[schedule] = (
            run(model, schedule, scale) if dist.get_rank() == 0 else torch.empty(1, noise.shape[1], *FULL)
        )
        dist.broadcast(reference[schedule], src=0)
    whole = sum(p.numel() for p in model.blocks.parameters())
    shard_blocks(model)
    local = sum(p.to_local().numel() for p in model.blocks.parameters())
    record("fsdp/stored_fraction_above_1/N", local / whole - 1 / world)
    for schedule, method in RUNS:
        net = ContextParallelWan(model, ParallelPlan(method, min_tokens=0), report.groups)
        report.sample(f"{schedule}/{method}", run(net, schedule, CASES[schedule]), reference[schedule])
    report.write(path)


def write_scaled_14b_dir(path, max_shard_size: str | None = None):
    """A diffusers directory at ``path`` of the tiny text encoder and VAE with the scaled 14B transformer, its
    weights in files of at most ``max_shard_size`` with an index, as the 14B's; returns ``path``."""
    import shutil

    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.wan.checkpoint import save_wan

    write_tiny_wan_dir(path)
    shutil.rmtree(path / "transformer")  # the tiny one
    save_wan(_scaled_model(), path, layout="diffusers", max_shard_size=max_shard_size)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_scaled_14b_dir(tmp_path_factory.mktemp("wan14b") / "wan")


def test_scaled_config_keeps_the_14b_shape_family():
    big, small = get_config("wan2.1-t2v-14b"), scaled_14b(16)
    assert small.head_dim == big.head_dim == 128 and small.ffn_dim / small.dim == big.ffn_dim / big.dim
    assert (small.patch_size, small.freq_dim, small.in_dim) == (big.patch_size, big.freq_dim, big.in_dim)
    assert small.num_heads == 5 and small.num_layers == 2


@pytest.mark.slow
@pytest.mark.parametrize("world, load", [(2, True), (4, False)])
def test_scaled_14b_sharded_samples_on_ranks_equal_one_process(world, load, request, tmp_path):
    """With ``load``, loaded from the model directory with the text encoder on the CPU; on 4 ranks built in
    place (four processes importing diffusers and transformers would take most of the test's time)."""
    from launch_fixtures import run_torchrun

    report = tmp_path / f"parallel_14b_{world}.json"
    source = str(request.getfixturevalue("model_dir")) if load else "-"
    run_torchrun(__file__, source, str(report), nproc=world, timeout=240)
    errors = json.loads(report.read_text())
    assert len(errors) == load + 1 + 2 * len(RUNS), sorted(errors)
    limits = {"sample": SAMPLE_TOL, "fsdp": FSDP_SLACK}  # else exact (0)
    bad = {name: err for name, err in errors.items() if not err <= limits.get(name.partition("/")[0], 0.0)}
    assert not bad, bad


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
