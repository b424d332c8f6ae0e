"""Equivalence with diffusers' WanTransformer3DModel, and the backbone contract and its adapter."""

import pytest
import torch
from wan_fixtures import random_wan

diffusers = pytest.importorskip("diffusers")

from pyrflow_fast.contract import (  # noqa: E402
    Backbone,
    BackboneDenoiser,
    DiffusersWanBackbone,
    WanBackbone,
    frame_timesteps,
)
from pyrflow_fast.resample import Pyramid  # noqa: E402
from pyrflow_fast.samplers import sample_euler  # noqa: E402
from pyrflow_fast.wan import get_config  # noqa: E402
from pyrflow_fast.wan.keys import (  # noqa: E402
    is_diffusers_layout,
    to_diffusers_key,
    to_diffusers_state_dict,
    to_original_key,
    to_original_state_dict,
)
from pyrflow_ref.windows import StageWindows  # noqa: E402

REL = 1e-5


def _pair(name, seed=0):
    ours = random_wan(name, seed=seed)
    cfg = ours.config
    kwargs = {k: v for k, v in cfg.to_diffusers_dict().items() if not k.startswith("_")}
    theirs = diffusers.WanTransformer3DModel.from_config(kwargs).eval()  # as diffusers reads config.json
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    return ours, theirs


@pytest.fixture(scope="module")
def tiny_pair():
    return _pair("tiny")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_key_mapping_is_a_bijection_onto_diffusers_names(tiny_pair):
    ours, theirs = tiny_pair
    ours_keys = list(ours.state_dict())
    mapped = [to_diffusers_key(k) for k in ours_keys]
    assert sorted(mapped) == sorted(theirs.state_dict())
    assert [to_original_key(k) for k in mapped] == ours_keys
    assert is_diffusers_layout(mapped) and not is_diffusers_layout(ours_keys)
    sd = ours.state_dict()
    assert to_original_state_dict(to_diffusers_state_dict(sd)).keys() == sd.keys()
    # the swap and the order-sensitive pair
    assert to_diffusers_key("blocks.7.norm2.weight") == "blocks.7.norm3.weight"
    assert to_diffusers_key("blocks.7.modulation") == "blocks.7.scale_shift_table"
    assert to_original_key("scale_shift_table") == "head.modulation"
    assert to_diffusers_key("something.else") == "something.else"


@pytest.mark.parametrize("name", ["tiny", "tiny-3layer"])
@pytest.mark.parametrize("size", [(1, 2, 2), (3, 4, 6), (2, 6, 4)])
def test_matches_diffusers_float32(name, size):
    ours, theirs = _pair(name, seed=len(size) + size[0])
    cfg = ours.config
    g = torch.Generator().manual_seed(sum(size))
    x = torch.randn(2, cfg.in_dim, *size, generator=g)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    for t in ([0.0, 1.0], [37.5, 500.0], [999.0, 250.25]):
        t = torch.tensor(t)
        with torch.no_grad():
            a = ours(x, t, ctx)
            b = theirs(x, t, ctx, return_dict=False)[0]
        assert a.shape == b.shape
        assert _rel(a, b) <= REL, (t, _rel(a, b))


def test_contract_wrappers_agree(tiny_pair):
    ours, theirs = tiny_pair
    cfg = ours.config
    a, b = WanBackbone(ours), DiffusersWanBackbone(theirs, text_len=cfg.text_len)
    assert isinstance(a, Backbone) and isinstance(b, Backbone)
    assert (b.in_channels, b.out_channels, b.patch_size) == (a.in_channels, a.out_channels, a.patch_size)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, cfg.in_dim, 3, 4, 6, generator=g)
    ctx = torch.randn(2, 5, cfg.text_dim, generator=g)  # short: both pad to text_len
    with torch.no_grad():
        for t in (torch.tensor([[10.0, 300.0, 999.0], [0.0, 500.0, 500.0]]), torch.tensor([40.0, 800.0]), 123.0):
            va, vb = a(x, t, ctx), b(x, t, ctx)
            assert va.shape == x.shape and va.dtype == torch.float32
            assert _rel(va, vb) <= REL
        # equal per-frame values take diffusers' (B,) path and WanDiT's exact path
        t = torch.tensor([[70.0] * 3, [900.0] * 3])
        assert torch.equal(b(x, t, ctx), b(x, t[:, 0], ctx))
        assert torch.equal(a(x, t, ctx), a(x, t[:, 0], ctx))


def test_diffusers_transformer_samples_as_a_denoiser(tiny_pair):
    """A diffusers transformer plugs into the samplers through the same adapters as WanDiT."""
    ours, theirs = tiny_pair
    cfg = ours.config
    pyramid, windows = Pyramid.uniform("haar", (1, 2, 2), 2), StageWindows((0.5,))
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(1, cfg.in_dim, 3, 2, 2, generator=g)
    ctx = torch.randn(1, 5, cfg.text_dim, generator=g)
    out = []
    for backbone in (WanBackbone(ours), DiffusersWanBackbone(theirs, text_len=cfg.text_len)):
        rng = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out.append(sample_euler(BackboneDenoiser(backbone), noise, pyramid, windows, "2-2", cond=ctx, rng=rng))
    assert out[0].shape == (1, cfg.in_dim, 3, 4, 4)
    assert _rel(out[1], out[0]) <= 10 * REL


def test_adapter_without_per_token_timesteps_rejects_unequal_frames(tiny_pair):
    _, theirs = tiny_pair
    b = DiffusersWanBackbone(theirs, text_len=8, per_token_timesteps=False)
    x = torch.randn(1, 4, 2, 4, 4)
    ctx = torch.randn(1, 8, 16)
    with torch.no_grad():
        b(x, torch.tensor([[5.0, 5.0]]), ctx)
        with pytest.raises(ValueError, match="equal values across frames"):
            b(x, torch.tensor([[5.0, 6.0]]), ctx)


def test_contract_validates_inputs(tiny_pair):
    ours, _ = tiny_pair
    a = WanBackbone(ours)
    with pytest.raises(ValueError, match="x must be"):
        a(torch.zeros(1, 3, 2, 4, 4), 1.0, torch.zeros(1, 8, 16))
    with pytest.raises(ValueError, match="divisible"):
        a(torch.zeros(1, 4, 2, 3, 4), 1.0, torch.zeros(1, 8, 16))
    with pytest.raises(ValueError, match="context"):
        a(torch.zeros(1, 4, 2, 4, 4), 1.0, torch.zeros(2, 8, 16))
    with pytest.raises(ValueError, match="t has shape"):
        frame_timesteps(torch.zeros(2, 3), 2, 4)
    with pytest.raises(ValueError, match="rope"):
        WanBackbone(ours, rope="linear")


def test_scaled_rope_backbone_uses_full_size(tiny_pair):
    ours, _ = tiny_pair
    x = torch.randn(1, 4, 3, 4, 6)
    ctx = torch.randn(1, 8, 16)
    scaled = WanBackbone(ours, rope="scaled")
    with torch.no_grad():
        assert torch.equal(scaled(x, 300.0, ctx), WanBackbone(ours)(x, 300.0, ctx))  # full size = own size
        coarse = scaled(x, 300.0, ctx, full_size=(5, 8, 12))
        assert torch.equal(coarse, ours(x, 300.0, ctx, rope="scaled", full_size=(5, 8, 12)))


def test_base_backbone_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Backbone()


def test_diffusers_config_round_trip():
    cfg = get_config("tiny-3layer")
    assert type(cfg).from_diffusers_dict(cfg.to_diffusers_dict(), text_len=cfg.text_len) == cfg
    assert type(cfg).from_original_dict(cfg.to_original_dict()) == cfg
    with pytest.raises(ValueError, match="image_dim"):
        type(cfg).from_diffusers_dict({**cfg.to_diffusers_dict(), "image_dim": 1280})
    with pytest.raises(ValueError, match="model_type"):
        type(cfg).from_original_dict({**cfg.to_original_dict(), "model_type": "i2v"})


def test_contract_needs_temporal_patch_one(make_wan):
    model = make_wan(get_config("tiny").replace(patch_size=(2, 2, 2)))
    with pytest.raises(ValueError, match="temporal patch of 1"):
        WanBackbone(model)
    x = torch.randn(1, 4, 4, 4, 4)
    with torch.no_grad():  # the model itself takes one timestep per temporal patch
        assert model(x, torch.tensor([[1.0, 900.0]]), torch.randn(1, 8, 16)).shape == x.shape
