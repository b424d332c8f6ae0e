"""WanDiT inference paths: cached RoPE tables, the text K/V cache, fused q/k/v projections."""

import pytest
import torch
from wan_fixtures import random_wan, wan_inputs

from pyrflow_fast.wan.rope import grid_positions, rope_cos_sin, rope_tables


@pytest.fixture
def model():
    return random_wan("tiny", seed=0)


def test_rope_tables_are_cached_per_shape_device_dtype(model):
    a = model.rope_tables((2, 3, 4))
    assert model.rope_tables((2, 3, 4)) is a
    assert model.rope_tables((2, 3, 5)) is not a
    b = model.rope_tables((2, 3, 4), dtype=torch.float64)
    assert b[0].dtype == torch.float64 and b is not a
    scaled = model.rope_tables((2, 3, 4), "scaled", full_size=(3, 12, 16))
    assert not torch.equal(scaled[0], a[0])


@pytest.mark.parametrize("full_grid", [None, (21, 28, 52)])
def test_rope_tables_equal_the_positions_path(full_grid):
    cos, sin = rope_tables((6, 7, 13), 16, full_grid=full_grid)
    ref_cos, ref_sin = rope_cos_sin(grid_positions((6, 7, 13), full_grid), 16)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_rope_tables_range_check_uses_sizes_only():
    with pytest.raises(ValueError, match=r"\[0, 1024\).*reaches 1024"):
        rope_tables((1, 1, 1025), 16)
    with pytest.raises(ValueError, match="rope_max_positions"):
        rope_tables((1, 1, 4), 16, full_grid=(1, 1, 2048))
    rope_tables((1, 1, 1024), 16)  # positions 0 ... 1023 fit


def _count_text_mlp(model):
    calls = []
    model.text_embedding[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_text_cache_computes_text_kv_once_per_context(model):
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.no_grad():
        plain = model(x, t, ctx)
        calls = _count_text_mlp(model)
        with model.text_cache():
            first = model(x, t, ctx)
            second = model(x * 0.5, t * 0.5, ctx)
            assert len(calls) == 1
            other = ctx.clone()
            model(x, t, other)
            assert len(calls) == 2
            ctx_changed = ctx.clone()
            model(x, t, ctx_changed)
            ctx_changed.mul_(2.0)  # in place: the version changes, the keys are recomputed
            changed = model(x, t, ctx_changed)
            assert len(calls) == 4
        model(x, t, ctx)
        assert len(calls) == 5  # outside the block nothing is cached
        fresh_changed = model(x, t, ctx * 2.0)
    assert torch.equal(first, plain)
    assert not torch.equal(second, plain)
    torch.testing.assert_close(changed, fresh_changed, rtol=0, atol=0)


def test_text_cache_is_bypassed_while_gradients_are_enabled(model):
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    calls = _count_text_mlp(model)
    with model.text_cache():
        model(x, t, ctx).sum().backward()
        model(x, t, ctx).sum().backward()
    assert len(calls) == 2
    assert model.text_embedding[0].weight.grad is not None


def test_text_cache_holds_a_few_contexts(model):
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.no_grad(), model.text_cache():
        for _ in range(3 * model._TEXT_CACHE_SIZE):
            model(x, t, ctx.clone())
        assert len(model._text_cache) == model._TEXT_CACHE_SIZE


def test_fused_projections_equal_the_separate_linears(model):
    """q/k/v run as one matmul; a hook on a Linear (as LoRA's) switches back to separate calls."""
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.no_grad():
        fused = model(x, t, ctx)
        seen = []
        handles = [
            layer.register_forward_hook(lambda m, i, o: seen.append(m))
            for block in model.blocks
            for layer in (block.self_attn.q, block.self_attn.k, block.self_attn.v, block.cross_attn.k)
        ]
        separate = model(x, t, ctx)
        for h in handles:
            h.remove()
    assert len(seen) == 4 * len(model.blocks)
    torch.testing.assert_close(fused, separate, rtol=1e-6, atol=1e-6)
