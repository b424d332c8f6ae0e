"""WanDiT: shapes, per-frame timesteps, RoPE modes, numerics under autocast, checkpointing, size."""

import math

import pytest
import torch

from pyrflow_fast.wan import CONFIGS, WanDiT, get_config
from pyrflow_fast.wan.model import sinusoidal_embedding
from pyrflow_fast.wan.rope import apply_rope, axis_dims, grid_positions, rope_cos_sin


def _inputs(cfg, b=2, f=3, h=4, w=6, text=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_dim, f, h, w, generator=g)
    ctx = torch.randn(b, cfg.text_len if text is None else text, cfg.text_dim, generator=g)
    return x, ctx


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("size", [(1, 2, 2), (3, 4, 6), (5, 6, 2), (2, 8, 4)])
def test_output_shape_any_divisible_size(tiny_model, size):
    cfg = tiny_model.config
    x, ctx = _inputs(cfg, 2, *size)
    with torch.no_grad():
        out = tiny_model(x, torch.tensor([3.0, 700.0]), ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_out_dim_differs_from_in_dim(make_wan):
    model = make_wan("tiny-3layer")
    x, ctx = _inputs(model.config, 1, 2, 4, 4)
    with torch.no_grad():
        assert model(x, 500.0, ctx).shape == (1, 6, 2, 4, 4)


@pytest.mark.parametrize(
    "size, t, match",
    [
        ((3, 5, 6), [1.0, 2.0], "divisible"),
        ((3, 4, 6), [1.0, 2.0, 3.0], "t has shape"),
        ((3, 4, 6), [[1.0, 2.0]] * 2, "t has shape"),
    ],
)
def test_bad_inputs_raise(tiny_model, size, t, match):
    x, ctx = _inputs(tiny_model.config, 2, *size)
    with pytest.raises(ValueError, match=match):
        tiny_model(x, torch.tensor(t), ctx)


def test_context_too_long_or_wrong_width_raises(tiny_model):
    cfg = tiny_model.config
    x, _ = _inputs(cfg)
    with pytest.raises(ValueError, match="text_len"):
        tiny_model(x, 1.0, torch.zeros(2, cfg.text_len + 1, cfg.text_dim))
    with pytest.raises(ValueError, match="text_dim"):
        tiny_model(x, 1.0, torch.zeros(2, 3, cfg.text_dim + 1))


def test_short_context_is_zero_padded_like_wan(tiny_model):
    cfg = tiny_model.config
    x, ctx = _inputs(cfg, text=5)
    padded = torch.cat([ctx, ctx.new_zeros(2, cfg.text_len - 5, cfg.text_dim)], dim=1)
    with torch.no_grad():
        assert torch.equal(tiny_model(x, 250.0, ctx), tiny_model(x, 250.0, padded))


def test_unpatchify_is_inverse_of_token_order():
    # Patch embedding (input order C, pt, ph, pw) and head (output order pt, ph, pw, C) wired to
    # copy each patch through: then out[c, f, h, w] must equal x[c, f, h, w].
    cfg = get_config("tiny")
    model = WanDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # patch embedding: channel c of patch offset (p, q, r) -> model dim index (c, p, q, r) flattened
        vol = cfg.patch_volume
        w = model.patch_embedding.weight  # (dim, C, pt, ph, pw)
        for c in range(cfg.in_dim):
            for k in range(vol):
                w.view(cfg.dim, cfg.in_dim, vol)[c * vol + k, c, k] = 1.0
        # head: output index (p, q, r, c) with c fastest <- dim index (c, p, q, r); blocks zeroed (gates 0)
        hw = model.head.head.weight  # (vol * C, dim)
        for c in range(cfg.in_dim):
            for k in range(vol):
                hw[k * cfg.in_dim + c, c * vol + k] = 1.0
    # All blocks add zero (zero weights: gates and cross-attention output vanish); bypass the
    # head's LayerNorm and modulation so that the head is just its Linear.
    model.head.forward = lambda x, e: torch.nn.functional.linear(x, model.head.head.weight, model.head.head.bias)
    x, ctx = _inputs(cfg, 1, 2, 4, 6)
    with torch.no_grad():
        out = model(x, 10.0, ctx)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- timesteps
def test_sinusoid_is_float64_cos_first():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.dtype == torch.float64 and emb.shape == (3, 8)
    freqs = [10000.0 ** (-i / 4) for i in range(4)]
    expect = [[math.cos(tt * f) for f in freqs] + [math.sin(tt * f) for f in freqs] for tt in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expect, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tv", [0.0, 1.0, 321.75, 999.0])
def test_equal_per_frame_t_is_bit_identical_to_scalar_t(tiny_model, tv):
    x, ctx = _inputs(tiny_model.config, 2, 3, 4, 6)
    t = torch.tensor([tv, tv / 3])
    with torch.no_grad():
        ref = tiny_model(x, t, ctx)
        per_frame = tiny_model(x, t[:, None].expand(2, 3).clone(), ctx)
        number = tiny_model(x, tv, ctx)
        vector = tiny_model(x, torch.full((2,), tv), ctx)
        matrix = tiny_model(x, torch.full((2, 3), tv), ctx)
    assert torch.equal(ref, per_frame)
    assert torch.equal(number, vector) and torch.equal(number, matrix)


def test_per_frame_t_conditions_each_frame_independently(tiny_model):
    # Frame-wise modulation: changing t of frame 2 changes outputs (all frames interact through
    # self-attention), and equals the model run with that frame's t being the scalar when F = 1.
    x, ctx = _inputs(tiny_model.config, 1, 3, 4, 6)
    with torch.no_grad():
        a = tiny_model(x, torch.tensor([[100.0, 100.0, 100.0]]), ctx)
        b = tiny_model(x, torch.tensor([[100.0, 100.0, 900.0]]), ctx)
        single = tiny_model(x[:, :, 2:], torch.tensor([900.0]), ctx)
        single_pf = tiny_model(x[:, :, 2:], torch.tensor([[900.0]]), ctx)
    assert not torch.allclose(a, b)
    assert torch.equal(single, single_pf)


def test_time_embedding_stays_float32_under_autocast(tiny_model):
    t = torch.tensor([[5.0, 600.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e, e0 = tiny_model.embed_time(t)
    e_ref, e0_ref = tiny_model.embed_time(t)
    assert e.dtype == e0.dtype == torch.float32
    assert torch.equal(e, e_ref) and torch.equal(e0, e0_ref)


def test_bf16_autocast_runs_and_stays_close(tiny_model):
    x, ctx = _inputs(tiny_model.config)
    with torch.no_grad():
        ref = tiny_model(x, torch.tensor([10.0, 900.0]), ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_model(x, torch.tensor([10.0, 900.0]), ctx)
    assert out.dtype == torch.float32
    assert ((out - ref).norm() / ref.norm()) < 0.05


# ------------------------------------------------------------------------------ RoPE
def _wan_rope_reference(x, grid, head_dim):
    """Wan's rope_apply: complex float64 table of 1024 positions, adjacent pairs, 22/21/21 split."""
    d = head_dim
    parts = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    tables = []
    for dim in parts:
        freqs = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(1024, dtype=torch.float64), freqs)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    f, h, w = grid
    full = torch.cat(
        [
            tables[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            tables[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            tables[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * full).flatten(-2).float()


def test_axis_dims_match_wan():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(16) == (8, 4, 4)


@pytest.mark.parametrize("head_dim, grid", [(128, (3, 4, 5)), (16, (2, 3, 4)), (24, (4, 1, 2))])
def test_integer_rope_matches_wan_complex_float64(head_dim, grid):
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, n, 3, head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_cos_sin(grid_positions(grid), head_dim)
    torch.testing.assert_close(apply_rope(x, cos, sin), _wan_rope_reference(x, grid, head_dim), rtol=1e-6, atol=1e-6)


def test_integer_positions_are_the_grid():
    pos = grid_positions((2, 3, 4))
    assert pos.dtype == torch.float64 and pos.shape == (24, 3)
    assert pos[0].tolist() == [0, 0, 0] and pos[1].tolist() == [0, 0, 1] and pos[4].tolist() == [0, 1, 0]
    assert pos[-1].tolist() == [1, 2, 3]


def test_scaled_positions_cell_centres_and_first_frame_rule():
    # Paper's coarsest stage 6x14x26 latents -> 6x7x13 patches; full grid 21x28x52 patches.
    pos = grid_positions((6, 7, 13), full_grid=(21, 28, 52))
    f = pos[:, 0].unique().tolist()
    assert f == [0.0, 2.5, 6.5, 10.5, 14.5, 18.5]  # frame 0 stays, factor 4 on the others
    assert pos[:, 1].unique().tolist() == [4 * k + 1.5 for k in range(7)]
    mid = grid_positions((11, 14, 26), full_grid=(21, 28, 52))
    assert mid[:, 0].unique().tolist() == [0.0] + [1 + 2 * (k - 1) + 0.5 for k in range(1, 11)]
    assert mid[:, 2].unique().tolist() == [2 * k + 0.5 for k in range(26)]
    # factor 1 is exactly the integer grid
    assert torch.equal(grid_positions((3, 4, 5), full_grid=(3, 4, 5)), grid_positions((3, 4, 5)))


def test_scaled_rope_in_model(tiny_model):
    x, ctx = _inputs(tiny_model.config, 1, 3, 4, 6)
    with torch.no_grad():
        integer = tiny_model(x, 500.0, ctx)
        same_size = tiny_model(x, 500.0, ctx, rope="scaled", full_size=(3, 4, 6))
        coarse = tiny_model(x, 500.0, ctx, rope="scaled", full_size=(5, 8, 12))
    assert torch.equal(integer, same_size)
    assert not torch.allclose(integer, coarse)
    with pytest.raises(ValueError, match="full_size"):
        tiny_model(x, 500.0, ctx, rope="scaled")
    with pytest.raises(ValueError, match="rope must be"):
        tiny_model(x, 500.0, ctx, rope="nearest")


def test_rope_positions_beyond_table_raise():
    with pytest.raises(ValueError, match="1024"):
        rope_cos_sin(grid_positions((1, 1, 1025)), 16)


# ------------------------------------------------------------------ training features
def test_gradient_checkpointing_gives_same_gradients(make_wan):
    x, ctx = _inputs(get_config("tiny"), 1, 2, 4, 4)
    grads = []
    for ckpt in (False, True):
        model = make_wan("tiny", seed=3).train()
        model.set_gradient_checkpointing(ckpt)
        model(x, torch.tensor([[200.0, 800.0]]), ctx).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------- size
def test_parameter_count_on_meta_device():
    with torch.device("meta"):
        small = WanDiT("wan2.1-t2v-1.3b")
        big = WanDiT("wan2.1-t2v-14b")
    assert all(p.is_meta for p in small.parameters())
    assert small.num_parameters() == 1_418_996_800
    # 46,440,704 per block x 30 + 25,775,680 outside the blocks (anchors section 1.1)
    assert sum(p.numel() for p in small.blocks[0].parameters()) == 46_440_704
    # 14B: same formula, dim 5120, ffn 13824, 40 layers
    d, ff, n = 5120, 13824, 40
    block = 8 * (d * d + d) + 4 * d + 2 * d + 6 * d + 2 * d * ff + ff + d
    outside = (
        16 * 4 * d + d + 4096 * d + d + d * d + d + 256 * d + d + d * d + d + 6 * d * d + 6 * d + 64 * d + 64 + 2 * d
    )
    assert big.num_parameters() == n * block + outside


def test_named_configs():
    assert get_config("Wan2.1-T2V-1.3B").head_dim == 128
    assert set(CONFIGS) >= {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}
    with pytest.raises(KeyError, match="unknown Wan config"):
        get_config("wan3")
    with pytest.raises(ValueError, match="divisible"):
        get_config("tiny").replace(num_heads=3)
