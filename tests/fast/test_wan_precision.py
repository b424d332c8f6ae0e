"""WanDiT precision: bf16 weights, bf16 autocast over float32 weights, and a float64 model.

Wan2.1 runs its matmuls in bf16 and the time embedding, modulation, norms, residual stream and head
in float32; the bf16 runs are compared with the float32 model by relative error, in units of bf16's
machine epsilon (2^-8 relative rounding of every matmul input).
"""

import copy

import pytest
import torch
from wan_fixtures import random_wan, wan_inputs

BF16_EPS = torch.finfo(torch.bfloat16).eps
BF16_REL = 4 * BF16_EPS
"""Relative L2 error allowed for a bf16 forward of the tiny model (measured: 0.12 to 0.2 of this)."""


@pytest.fixture(scope="module")
def model():
    return random_wan("tiny", seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return wan_inputs(model.config, (3, 4, 6))


@pytest.fixture(scope="module")
def reference(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def rel(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def test_mixed_precision_keeps_wans_float32_parameters(model):
    mixed = copy.deepcopy(model).to_mixed_precision(torch.bfloat16)
    dtypes = {name: p.dtype for name, p in mixed.named_parameters()}
    for name in ("time_embedding.0.weight", "time_projection.1.bias", "blocks.0.modulation", "blocks.1.norm3.weight"):
        assert dtypes[name] == torch.float32, name
    for name in ("blocks.0.self_attn.norm_q.weight", "head.head.weight", "head.modulation"):
        assert dtypes[name] == torch.float32, name
    for name in (
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "blocks.0.self_attn.q.weight",
        "blocks.1.ffn.2.bias",
    ):
        assert dtypes[name] == torch.bfloat16, name
    assert list(mixed.state_dict()) == list(model.state_dict())  # Wan's keys, unchanged


@pytest.mark.parametrize("cast", ["to_mixed_precision", "all_bf16"])
def test_bf16_weights_forward_is_finite_and_close(model, inputs, reference, cast):
    m = copy.deepcopy(model)
    m = m.to_mixed_precision(torch.bfloat16) if cast == "to_mixed_precision" else m.to(torch.bfloat16)
    with torch.no_grad():
        out = m(*inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel(out, reference) < BF16_REL


def test_bf16_autocast_over_float32_weights(model, inputs, reference):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*inputs)
        e, e0 = model.embed_time(inputs[1])
    assert out.dtype == e.dtype == e0.dtype == torch.float32
    assert rel(out, reference) < BF16_REL


def test_bf16_weights_under_autocast(model, inputs, reference):
    m = copy.deepcopy(model).to_mixed_precision(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(*inputs)
    assert out.dtype == torch.float32 and rel(out, reference) < BF16_REL


def test_float64_model_matches_float32(model, inputs, reference):
    m = copy.deepcopy(model).double()
    x, t, ctx = inputs
    with torch.no_grad():
        out = m(x.double(), t.double(), ctx.double())
        e, e0 = m.embed_time(t.double())
        cos, _ = m.rope_tables((3, 2, 3), dtype=torch.float64)
    assert out.dtype == e.dtype == e0.dtype == cos.dtype == torch.float64
    # float32 rounding of the reference at this output scale (max |v| about 8)
    torch.testing.assert_close(out, reference.double(), rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def test_float64_model_is_not_rounded_to_float32(model, inputs):
    """Every op of the float64 model keeps float64: perturbing the input below float32 resolution moves the output."""
    m = copy.deepcopy(model).double()
    x, t, ctx = (v.double() for v in inputs)
    with torch.no_grad():
        a = m(x, t, ctx)
        b = m(x * (1 + 1e-12), t, ctx)
    assert not torch.equal(a, b) and float((a - b).abs().max()) < 1e-9
