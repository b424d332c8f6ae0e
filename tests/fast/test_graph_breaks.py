"""The WanDiT forward traces as one graph: no data-dependent branch, no host sync, no graph break."""

import pytest
import torch
from wan_fixtures import random_wan, wan_inputs


@pytest.fixture(scope="module")
def model():
    return random_wan("tiny", seed=0)


def explain(model, *args, **kwargs):
    torch._dynamo.reset()
    with torch.no_grad():
        return torch._dynamo.explain(model)(*args, **kwargs)


def test_forward_is_one_graph(model):
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    report = explain(model, x, t, ctx)
    assert (report.graph_count, report.graph_break_count) == (1, 0), report.break_reasons


def test_scaled_rope_under_autocast_is_one_graph(model):
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = explain(model, x, t, ctx, rope="scaled", full_size=(5, 8, 12))
    assert (report.graph_count, report.graph_break_count) == (1, 0), report.break_reasons


def test_compile_blocks_compiles_every_block_and_matches_eager():
    model = random_wan("tiny", seed=1)
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.no_grad():
        eager = model(x, t, ctx)
        torch._dynamo.reset()
        # the cheap backend keeps the test fast; GPU runs use the default inductor + max-autotune
        assert model.compile_blocks(mode=None, backend="aot_eager") is model
        compiled = model(x, t, ctx)
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
