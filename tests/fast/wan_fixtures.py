"""Helpers of the pyrflow_fast tests: small random Wan models."""

import torch

from pyrflow_fast.wan import WanDiT, get_config


def random_wan(config="tiny", seed=0, std=0.3):
    """A WanDiT whose every parameter (the zero-initialised head included) is N(0, std^2)."""
    torch.manual_seed(seed)
    model = WanDiT(get_config(config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def wan_inputs(cfg, size, batch=2, seed=0):
    """``x`` ``(B, C, *size)``, per-frame ``t`` ``(B, 3)`` (batch at most 2), a short context ``(B, 5, text_dim)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, *size, generator=gen)
    t = torch.tensor([[700.0, 650.0, 600.0], [300.0, 300.0, 300.0]])[:batch]
    ctx = torch.randn(batch, 5, cfg.text_dim, generator=gen)
    return x, t, ctx
