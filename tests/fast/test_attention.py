"""The attention backend switch: what is available, selecting one, and the model running under it."""

import pytest
import torch
import torch.nn.functional as F
from wan_fixtures import random_wan, wan_inputs

from pyrflow_fast.wan import attention


def test_backends_and_availability_on_this_machine():
    assert attention.BACKENDS == ("auto", "math", "flash", "efficient", "cudnn", "flash3", "sage")
    runnable = attention.available()
    assert runnable[:2] == ["auto", "math"] and set(runnable) <= set(attention.BACKENDS)
    if not torch.cuda.is_available():
        assert runnable == ["auto", "math"]


def test_use_selects_restores_and_nests():
    assert attention.current() == "auto"
    with attention.use("math") as name:
        assert name == attention.current() == "math"
        with attention.use("auto"):
            assert attention.current() == "auto"
        assert attention.current() == "math"
    assert attention.current() == "auto"


def test_unknown_or_unavailable_backend_raises_naming_the_available_ones():
    with pytest.raises(ValueError, match="unknown attention backend 'flash4'; known: auto, math, flash"):
        with attention.use("flash4"):
            pass
    if "flash" not in attention.available():
        with pytest.raises(ValueError, match="'flash' is not available here; available: auto, math"):
            with attention.use("flash"):
                pass
    assert attention.current() == "auto"


def test_math_backend_pins_sdpa():
    """Inside use('math') SDPA's switches allow only its math kernel."""
    q, k, v = (torch.randn(1, 7, 2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with attention.use("math"):
        out = attention.attend(q, k, v)
        backends = torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()
    assert backends == (True, False)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_model_runs_under_each_available_backend():
    model = random_wan("tiny", seed=0)
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    with torch.no_grad():
        ref = model(x, t, ctx)
        for name in attention.available():
            with attention.use(name):
                torch.testing.assert_close(model(x, t, ctx), ref, rtol=1e-5, atol=1e-5, msg=name)
