"""``[loss] sigma_shift``: the training noise-level shift rho -> s rho / (1 + (s - 1) rho)."""

import numpy as np
import pytest
import torch

from pyrflow_fast.resample import Pyramid
from pyrflow_fast.train.config import TrainConfig
from pyrflow_fast.train.loss import PyramidalLoss, draw, shift_level
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows, shift_sigma

PYRAMID = Pyramid.uniform("haar", (2, 2, 2), 3)
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)
PLAIN = (Pyramid(()), StageWindows(()))


def _rhos(n: int) -> torch.Tensor:
    """``n`` uniform levels exactly as the trainer draws them (seed 0, step 0, slots 0..n-1)."""
    return torch.tensor([draw(0, 0, j, (1,)).rho for j in range(n)], dtype=torch.float64)


def _sigmas(loss: PyramidalLoss, rho: torch.Tensor) -> torch.Tensor:
    """The noise levels the single-stage loss uses for ``rho``: with x0 = 0 and eps = 1, x = sigma."""
    b = len(rho)
    x, *_ = loss.inputs([torch.zeros(b, 1, 1, 1, 1)], torch.ones(b, 1, 1, 1, 1), rho, 0)
    return x.flatten().double()


def test_default_shift_leaves_the_inputs_bit_exact():
    rho = _rhos(16)
    x0s = [torch.randn(16, 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))]
    eps = torch.randn(16, 2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    default = PyramidalLoss(*PLAIN).inputs(x0s, eps, rho, 0)
    explicit = PyramidalLoss(*PLAIN, sigma_shift=1.0).inputs(x0s, eps, rho, 0)
    for a, b in zip(default[:4], explicit[:4]):
        assert torch.equal(a, b)
    s = rho.float()[:, None, None, None, None]
    assert torch.equal(default[0], (1 - s) * x0s[0] + s * eps)  # Wan's x_sigma with sigma = rho
    assert torch.equal(shift_level(rho, 1.0), rho)


@pytest.mark.parametrize("shift", [5.0, 0.5])
def test_shifted_levels_have_the_shifted_cdf(shift):
    # 4000 draws: the empirical CDF's standard error is <= 0.008, so 0.03 is ~4 sigma and a wrong map fails it
    # (the uniform CDF differs from the shift-5 one by >= 0.2 at these points, from the shift-0.5 one by >= 0.08)
    sigma = _sigmas(PyramidalLoss(*PLAIN, sigma_shift=shift), _rhos(4000)).numpy()
    for u in (0.2, 0.5, 0.8, 0.95):
        expected = u / (shift - (shift - 1) * u)
        assert abs(np.mean(sigma <= u) - expected) < 0.03, (u, np.mean(sigma <= u), expected)
    np.testing.assert_allclose(sigma, shift_sigma(_rhos(4000).numpy(), shift), rtol=1e-6)  # Wan's timestep shift


def test_shift_is_applied_before_the_stage_window():
    rho = _rhos(6)
    x0s = [torch.randn(6, 2, *s, generator=torch.Generator().manual_seed(k)) for k, s in enumerate(
        [(5, 8, 8), (3, 4, 4), (2, 2, 2)])]  # fmt: skip
    shifted = PyramidalLoss(PYRAMID, WINDOWS, sigma_shift=3.0)
    plain = PyramidalLoss(PYRAMID, WINDOWS)
    for stage in range(3):
        eps = torch.randn(x0s[stage].shape, generator=torch.Generator().manual_seed(10 + stage))
        got = shifted.inputs(x0s, eps, rho, stage)
        want = plain.inputs(x0s, eps, shift_level(rho, 3.0), stage)
        for a, b in zip(got[:4], want[:4]):
            assert torch.equal(a, b)
        assert not torch.equal(got[3], plain.inputs(x0s, eps, rho, stage)[3])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_shift_is_refused_with_the_field_name(bad):
    with pytest.raises(ValueError, match="loss.sigma_shift"):
        PyramidalLoss(*PLAIN, sigma_shift=bad)
    with pytest.raises(ValueError, match="loss.sigma_shift must be finite and > 0"):
        TrainConfig.from_dict({"loss": {"sigma_shift": bad}})


def test_config_field_reads_and_defaults_to_no_shift():
    assert TrainConfig.from_dict({}).loss.sigma_shift == 1.0
    assert TrainConfig.from_dict({"loss": {"sigma_shift": 5}}).loss.sigma_shift == 5.0
