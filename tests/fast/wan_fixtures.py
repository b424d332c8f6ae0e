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
