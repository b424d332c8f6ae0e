"""A whole Wan block compiles with torch.compile(fullgraph=True) on CPU."""

import pytest
import torch
from wan_fixtures import random_wan


@pytest.fixture(scope="module")
def block_inputs():
    model = random_wan("tiny", seed=2)
    g = torch.Generator().manual_seed(0)
    grid = (2, 2, 3)
    x = torch.randn(1, grid[0], grid[1] * grid[2], model.config.dim, generator=g)
    e0 = torch.randn(1, grid[0], 6, model.config.dim, generator=g)
    ctx = torch.randn(1, model.config.text_len, model.config.dim, generator=g)
    cos, sin = model.rope_tables(grid)
    return model.blocks[0], (x, e0, ctx, cos, sin)


@pytest.mark.slow
# Inductor's CPU code generation touches torch.jit.script_method, deprecated in torch 2.13.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_block_compiles_fullgraph_inductor(block_inputs):
    block, args = block_inputs
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), block(*args), rtol=1e-5, atol=1e-5)


def test_block_compiles_fullgraph_with_backward(block_inputs):
    block, args = block_inputs
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = args[0].clone().requires_grad_(True)
    compiled(x, *args[1:]).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    block(x, *args[1:]).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-6)
