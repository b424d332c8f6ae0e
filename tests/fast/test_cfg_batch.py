"""Classifier-free guidance runs its two branches as one batched forward, equal to two calls."""

import torch
from wan_fixtures import random_wan, wan_inputs

from pyrflow_fast.contract import BackboneDenoiser, WanBackbone
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.samplers import guided, sample_euler
from pyrflow_ref.windows import StageWindows


def _denoiser(seed=0):
    return BackboneDenoiser(WanBackbone(random_wan("tiny", seed=seed)))


class _Counting:
    def __init__(self, model):
        self.model, self.batches = model, []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        return self.model(x, t, cond)


def test_batched_branches_equal_two_calls():
    model = _Counting(_denoiser())
    x, t, cond = wan_inputs(model.model.backbone.model.config, (3, 4, 6))
    uncond = torch.zeros_like(cond)
    g = guided(model, 5.0, uncond=uncond)
    with torch.no_grad():
        v_c, v_u = g.branches(x, t, cond)
        assert model.batches == [4]
        ref_c, ref_u = model(x, t, cond), model(x, t, uncond)
    # float32 rounding at the output's scale (the batch changes the matmul blocking)
    atol = 1e-6 * float(ref_c.abs().max())
    torch.testing.assert_close(v_c, ref_c, rtol=1e-5, atol=atol)
    torch.testing.assert_close(v_u, ref_u, rtol=1e-5, atol=atol)


def test_batched_pair_is_one_tensor_per_cond_and_feeds_the_text_cache():
    net = random_wan("tiny", seed=1)
    model = BackboneDenoiser(WanBackbone(net))
    x, t, cond = wan_inputs(net.config, (3, 4, 6), batch=1)
    g = guided(model, 4.0, uncond=torch.zeros_like(cond))
    calls = []
    net.text_embedding[0].register_forward_hook(lambda *_: calls.append(1))
    pyramid, windows = Pyramid(()), StageWindows(())
    with torch.no_grad():
        plain = sample_euler(g, x, pyramid, windows, (3,), cond=cond)
        assert len(calls) == 3  # one batched forward per step, no cache
        with net.text_cache():
            cached = sample_euler(g, x, pyramid, windows, (3,), cond=cond)
    assert len(calls) == 4  # the batched pair is the same tensor at every step
    torch.testing.assert_close(cached, plain, rtol=0, atol=0)


def test_unbatchable_conditions_take_two_calls():
    model = _Counting(lambda x, t, c: x * (1.0 if c is None else 2.0))
    g = guided(model, 3.0)  # uncond None: not a tensor
    x = torch.ones(1, 2, 1, 2, 2)
    v_c, v_u = g.branches(x, torch.zeros(1, 1), torch.ones(1, 3, 4))
    assert model.batches == [1, 1]
    assert torch.equal(v_c, 2 * x) and torch.equal(v_u, x)
