"""pyrflow_fast.contract: the denoiser adapters (backbone, frozen, PPF)."""

import pytest
import torch
from wan_fixtures import random_wan, wan_inputs

from pyrflow_fast.contract import BackboneDenoiser, FrozenDenoiser, PPFDenoiser, WanBackbone
from pyrflow_fast.ppf import PPFWan
from pyrflow_fast.train.lora import LoRA
from pyrflow_ref.windows import StageWindows

SIZE = (3, 4, 6)
WINDOWS = StageWindows((0.4, 0.8))


def inputs(cfg, batch=2, seed=0, size=SIZE):
    return wan_inputs(cfg, size, batch, seed)


@pytest.fixture(scope="module")
def model():
    return random_wan("tiny", seed=1)


def test_backbone_denoiser_binds_full_size(model):
    x, t, ctx = inputs(model.config)
    full = (5, 8, 12)
    bound = BackboneDenoiser(WanBackbone(model, rope="scaled"), full_size=full)
    unbound = BackboneDenoiser(WanBackbone(model, rope="scaled"))
    with torch.no_grad():
        coarse = bound(x, t, ctx)
        assert coarse.dtype == torch.float32 and coarse.shape == x.shape
        assert torch.equal(coarse, model(x, t, ctx, rope="scaled", full_size=full))
        own = model(x, t, ctx, rope="scaled", full_size=SIZE)
        assert torch.equal(unbound(x, t, ctx), own)  # the backbone's default: the input size
        assert torch.equal(bound(x, t, ctx, SIZE), own)  # a size given to the call wins
        assert not torch.equal(coarse, own)
        integer = BackboneDenoiser(WanBackbone(model), full_size=full)
        assert torch.equal(integer(x, t, ctx), model(x, t, ctx))  # integer RoPE ignores the size


def test_backbone_denoiser_selects_the_stage_lora():
    base = random_wan("tiny", seed=2).requires_grad_(False)
    lora = LoRA(base, rank=2, num_sets=3)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(0.0, 0.5)
    net = BackboneDenoiser(WanBackbone(base), lora=lora)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("lora.") for n in trainable)
    assert {k.split(".")[0] for k in net.state_dict()} == {"backbone", "lora"}
    assert any(k.startswith("backbone.model.blocks.0.") for k in net.state_dict())
    x, t, ctx = inputs(base.config)
    with torch.no_grad():
        outs = []
        for stage in (2, 0, 1):
            out = net(x, t, ctx, stage=stage)
            assert lora.active == stage
            lora.select(stage)
            assert torch.equal(out, base(x, t, ctx))
            outs.append(out)
        assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
        assert torch.equal(net(x, t, ctx), outs[1])  # stage 0 by default


def test_frozen_denoiser_records_no_graph_and_returns_an_ordinary_tensor(model):
    trained = random_wan("tiny", seed=3).requires_grad_(True)
    fn = BackboneDenoiser(WanBackbone(trained, rope="scaled"))
    frozen = FrozenDenoiser(fn)
    assert frozen.fn is fn
    x, t, ctx = inputs(model.config)
    out = frozen(x, t, ctx, full_size=(5, 8, 12))
    assert not out.requires_grad and not torch.is_inference(out)
    with torch.no_grad():
        assert torch.equal(out, fn(x, t, ctx, full_size=(5, 8, 12)))
    w = torch.ones((), requires_grad=True)
    (w * out).sum().backward()  # usable inside a recorded computation
    assert w.grad is not None and all(p.grad is None for p in trained.parameters())
    with torch.inference_mode():
        raw = fn(x, t, ctx)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (w * raw).sum().backward()  # what the clone avoids


@pytest.fixture(scope="module")
def ppf():
    ppf = PPFWan(random_wan("tiny", seed=4)).eval()
    with torch.no_grad():
        ppf.stage_embedding.normal_()
    return ppf


def test_ppf_denoiser_dispatches_levels_by_timestep(ppf):
    x, _, ctx = inputs(ppf.config, batch=3, size=(3, 8, 8))
    t = torch.tensor([900.0, 400.0, 100.0])  # stages 2, 0 (a boundary belongs to the finer stage), 0
    model = PPFDenoiser(ppf, WINDOWS)
    assert model.stages(t, 3, 3) == [2, 0, 0]
    assert model.stages(torch.tensor([[500.0] * 3] * 3), 3, 3) == [1, 1, 1]
    with torch.no_grad():
        out = model(x, t, ctx)
        assert out.shape == x.shape and out.dtype == torch.float32
        torch.testing.assert_close(out[:1], ppf(x[:1], t[:1], ctx[:1], stage=2))
        torch.testing.assert_close(out[1:], ppf(x[1:], t[1:], ctx[1:], stage=0))
        assert not torch.allclose(out[:1], ppf(x[:1], t[:1], ctx[:1], stage=0))
    with pytest.raises(ValueError, match="equal over frames"):
        model(x[:2], torch.tensor([[100.0, 200.0, 300.0], [1.0, 1.0, 1.0]]), ctx[:2])
    with pytest.raises(ValueError, match="2 windows for 3 PPF stages"):
        PPFDenoiser(ppf, StageWindows((0.5,)))
