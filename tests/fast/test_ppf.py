"""Pyramidal patchification (PPF): initialisation from the pretrained patch layers, stages, FLOPs."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from wan_fixtures import random_wan, wan_inputs

from pyrflow_fast.contract import PPFDenoiser
from pyrflow_fast.flops import forward_flops, latent_size, schedule_flops
from pyrflow_fast.ppf import (
    DEFAULT_PATCHES,
    PPFWan,
    main,
    ppf_forward_flops,
    ppf_schedule_flops,
    sample_ppf,
    subpatch_factors,
)
from pyrflow_fast.samplers import sample_plain
from pyrflow_ref.windows import StageWindows, step_grid

SIZE = (3, 16, 16)  # (F, H, W): divisible by every default patch
WINDOWS = StageWindows((0.4, 0.8))


def inputs(cfg, batch=2, seed=0, size=SIZE):
    return wan_inputs(cfg, size, batch, seed)


@pytest.fixture(scope="module")
def ppf():
    return PPFWan(random_wan("tiny", seed=0)).eval()


def test_level0_is_the_wrapped_model_exactly(ppf):
    x, t, ctx = inputs(ppf.config)
    with torch.no_grad():
        assert torch.equal(ppf(x, t, ctx, stage=0), ppf.model(x, t, ctx))
        assert torch.equal(ppf(x, 500.0, ctx), ppf.model(x, 500.0, ctx))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_output_shapes(ppf, stage):
    x, t, ctx = inputs(ppf.config)
    with torch.no_grad():
        out = ppf(x, t, ctx, stage=stage)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert ppf.grid(SIZE, stage) == (3, 16 // (2 * 2**stage), 16 // (2 * 2**stage))


@pytest.mark.parametrize("stage", [1, 2])
def test_patch_embedding_initialisation(ppf, stage):
    r = subpatch_factors(DEFAULT_PATCHES[stage], (1, 2, 2))
    fine, coarse = ppf.model.patch_embedding, ppf.patch_embeddings[stage]
    x, _, _ = inputs(ppf.config, seed=stage)
    with torch.no_grad():
        # an input constant over each coarse patch: its coarse token is the fine token of that constant
        cells = torch.randn(2, ppf.config.in_dim, 3, 16 // (2 * r[1]), 16 // (2 * r[2]))
        const = cells.repeat_interleave(2 * r[1], dim=3).repeat_interleave(2 * r[2], dim=4)
        tok_coarse = coarse(const)
        tok_fine = fine(const)[..., :: r[1], :: r[2]]
        torch.testing.assert_close(tok_coarse, tok_fine, rtol=1e-5, atol=1e-5)
        # in general: the fine embedding of the sub-patch-averaged input
        pooled = F.avg_pool3d(x, kernel_size=r)
        torch.testing.assert_close(coarse(x), fine(pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_head_initialisation_copies_each_fine_output_over_its_subpatch(ppf, stage):
    r = subpatch_factors(DEFAULT_PATCHES[stage], (1, 2, 2))
    cfg = ppf.config
    hidden = torch.randn(4, cfg.dim)
    with torch.no_grad():
        out = ppf.heads[stage](hidden).reshape(4, *DEFAULT_PATCHES[stage], cfg.out_dim)
        fine = ppf.model.head.head(hidden).reshape(4, 1, 2, 2, cfg.out_dim)
    expected = fine.repeat_interleave(r[1], dim=2).repeat_interleave(r[2], dim=3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    blocks = out.reshape(4, 1, 2, r[1], 2, r[2], cfg.out_dim)  # constant over each sub-patch
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))


@pytest.mark.parametrize("stage", [1, 2])
def test_level_is_the_pooled_pretrained_model_at_initialisation(ppf, stage):
    """Stage l at initialisation = WanDiT on the avg-pooled latent with scaled RoPE, nearest-upsampled."""
    r = subpatch_factors(DEFAULT_PATCHES[stage], (1, 2, 2))
    x, t, ctx = inputs(ppf.config, seed=3)
    with torch.no_grad():
        ours = ppf(x, t, ctx, stage=stage)
        pooled = ppf.model(F.avg_pool3d(x, kernel_size=r), t, ctx, rope="scaled", full_size=SIZE)
    expected = pooled.repeat_interleave(r[1], dim=3).repeat_interleave(r[2], dim=4)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_level_embedding_conditions_the_time(ppf):
    x, t, ctx = inputs(ppf.config)
    model = PPFWan(random_wan("tiny", seed=1))
    assert torch.equal(model.stage_embedding, torch.zeros(3, model.config.dim))
    with torch.no_grad():
        before = model(x, t, ctx, stage=1)
        model.stage_embedding[1].normal_()
        after1, after0 = model(x, t, ctx, stage=1), model(x, t, ctx, stage=0)
    assert not torch.allclose(before, after1)
    assert torch.equal(after0, model.model(x, t, ctx))  # other stages unaffected
    model.train()
    model(x, t, ctx, stage=2).square().mean().backward()
    assert model.heads[2].weight.grad is not None and model.patch_embeddings[2].weight.grad is not None
    assert model.stage_embedding.grad[2].abs().sum() > 0 and model.stage_embedding.grad[:2].abs().sum() == 0
    assert model.heads[1].weight.grad is None


def test_validation():
    base = random_wan("tiny")
    with pytest.raises(ValueError, match="stage 0 must use"):
        PPFWan(base, ((1, 4, 4), (1, 8, 8)))
    with pytest.raises(ValueError, match="temporal patch"):
        PPFWan(base, ((1, 2, 2), (2, 4, 4)))
    with pytest.raises(ValueError, match="not a multiple"):
        PPFWan(base, ((1, 2, 2), (1, 3, 3)))
    ppf = PPFWan(base)
    x, t, ctx = inputs(ppf.config, size=(3, 8, 12))
    with pytest.raises(ValueError, match="not divisible"):
        ppf(x, t, ctx, stage=2)
    with pytest.raises(ValueError, match="out of range"):
        ppf(x, t, ctx, stage=3)
    with pytest.raises(ValueError, match="out of range"):
        ppf_forward_flops("tiny", SIZE, 3)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_flops_agree_with_flop_counter_mode(ppf, stage):
    x, t, ctx = inputs(ppf.config)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        ppf(x, t, ctx, stage=stage)
    br = ppf_forward_flops(ppf.config, SIZE, stage, batch=2)  # Wan pads the text to text_len
    assert br.total == counter.get_total_flops()
    assert br.tokens == 3 * (16 // (2 * 2**stage)) ** 2


def test_ppf_schedule_costs_on_wan_1_3b():
    full = latent_size((81, 448, 832))
    tokens = [ppf_forward_flops("wan2.1-t2v-1.3b", full, i).tokens for i in range(3)]
    assert tokens == [30576, 7644, 1911]  # F * H/(2*2^l) * W/(2*2^l)
    assert ppf_forward_flops("wan2.1-t2v-1.3b", full, 0).total == forward_flops("wan2.1-t2v-1.3b", full).total
    ppf221 = ppf_schedule_flops("2-2-1", "wan2.1-t2v-1.3b", full) / 1e12
    pyr = [
        forward_flops("wan2.1-t2v-1.3b", latent_size(p)).total / 1e12
        for p in ((81, 448, 832), (41, 224, 416), (21, 112, 208))
    ]
    pyr221, plain002 = schedule_flops("2-2-1", pyr), schedule_flops("0-0-2", pyr)
    assert pyr221 < ppf221 < plain002  # PPF 2-2-1 costs more than the resolution pyramid's
    # the paper's latencies: pyramid 714.5 ms, PPF about 810 ms; FLOPs ratio predicts the same order
    assert ppf221 / pyr221 == pytest.approx(810 / 714.5, rel=0.02)


def test_cli(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "ppf 2-2-1" in out and "7644" in out
    assert main(["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ppf_tokens"] == [30576, 7644, 1911]
    assert rep["schedules"]["ppf 2-2-1"]["latency_ms"] == pytest.approx(810, rel=0.02)


# ------------------------------------------------------------------------------------- sampling


def test_ppf_denoiser_dispatches_levels_by_timestep(ppf):
    x, _, ctx = inputs(ppf.config)
    x3 = torch.cat([x, x[:1]])
    ctx3 = torch.cat([ctx, ctx[:1]])
    t = torch.tensor([900.0, 400.0, 100.0])  # stages 2, 0 (a boundary belongs to the finer stage), 0
    model = PPFDenoiser(ppf, WINDOWS)
    assert model.stages(t, 3, 3) == [2, 0, 0]
    with torch.no_grad():
        out = model(x3, t, ctx3)
        torch.testing.assert_close(out[:1], ppf(x3[:1], t[:1], ctx3[:1], stage=2))
        torch.testing.assert_close(out[1:], ppf(x3[1:], t[1:], ctx3[1:], stage=0))
    with pytest.raises(ValueError, match="equal over frames"):
        model(x, torch.tensor([[100.0, 200.0, 300.0], [1.0, 1.0, 1.0]]), ctx)
    with pytest.raises(ValueError, match="windows for"):
        PPFDenoiser(ppf, StageWindows((0.5,)))


def test_sample_ppf_full_resolution_schedule_is_plain_sampling(ppf):
    x, _, ctx = inputs(ppf.config, batch=1)
    with torch.no_grad():
        ours = sample_ppf(ppf, x, ctx, WINDOWS, "0-0-3", shift=3.0)
        plain = sample_plain(lambda xn, t, c: ppf.model(xn, t, c), x, 3, cond=ctx, shift=3.0)
        guided_trivially = sample_ppf(ppf, x, ctx, WINDOWS, (0, 0, 3), shift=3.0, guidance=4.0, uncond=ctx)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided_trivially, ours, rtol=1e-5, atol=1e-5)


def test_sample_ppf_few_step(ppf):
    x, _, ctx = inputs(ppf.config, batch=1)
    with torch.no_grad():
        ours = sample_ppf(ppf, x, ctx, WINDOWS, "2-1-1", shift=2.0, few_step=True, rng=torch.Generator().manual_seed(0))
        # the same schedule by hand: the stage of each step comes from its noise level
        model, gen = PPFDenoiser(ppf, WINDOWS), torch.Generator().manual_seed(0)
        grids = [step_grid(WINDOWS.sigma_n(i), WINDOWS.sigma_c(i), n, 2.0)[:-1] for i, n in ((2, 2), (1, 1), (0, 1))]
        sigmas = [float(s) for g in grids for s in g] + [0.0]
        y = x
        for s, s_next in zip(sigmas, sigmas[1:]):
            x0 = y - s * model(y, torch.tensor([1000.0 * s]), ctx)
            y = x0 if s_next == 0.0 else (1 - s_next) * x0 + s_next * torch.randn(x.shape, generator=gen)
    torch.testing.assert_close(ours, y, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="skips a stage"):
        sample_ppf(ppf, x, ctx, WINDOWS, "1-0-1", few_step=True)


def test_ppf_as_dmd_teacher_and_critic(ppf):
    """PPF distils with the plain process: PPFDenoiser picks each sample's stage from its score level."""
    from pyrflow_fast.distill.config import DistillSection
    from pyrflow_fast.distill.dmd import DMD
    from pyrflow_fast.process import StageProcess

    x, _, ctx = inputs(ppf.config)
    model = PPFDenoiser(ppf, WINDOWS)
    dmd = DMD(model, model, "ot", DistillSection(guidance=1.0))
    x_gen = x.clone().requires_grad_()
    out = dmd.generator_loss(x_gen, StageProcess.plain(), ctx, rng=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.x0_fake, out.x0_real)  # same model: zero DMD gradient
    assert out.grad.abs().max() == 0 and out.total.item() == 0.0
    loss = dmd.critic_loss(x_gen, StageProcess.plain(), ctx, rng=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and x_gen.grad is None  # the critic loss never reaches the generator
    assert any(p.grad is not None for p in ppf.parameters())
    ppf.zero_grad(set_to_none=True)
