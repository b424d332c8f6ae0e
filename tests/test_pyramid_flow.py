"""Pyramid Flow reproduced by the orthonormal machinery (theory §3.4)."""

import numpy as np
import pytest

from pyrflow_ref.natural import varsigma
from pyrflow_ref.pyramid_flow import block_correlation, high_band_unit_noise, jump_coefficients, stage_constants
from pyrflow_ref.resample import Resampler


@pytest.mark.parametrize("s", [0.1, 0.2, 0.5, 0.9])
def test_jump_coefficients_closed_forms(s):
    a, b, e = jump_coefficients(s, 4)
    assert (a, b, e) == pytest.approx(((1 + s) / 2, np.sqrt(3) * (1 - s) / 2, 2 * s / (1 + s)), abs=1e-15)
    a8, b8, e8 = jump_coefficients(s, 8)
    r8 = np.sqrt(8)
    assert (a8, b8, e8) == pytest.approx(
        (s + (1 - s) / r8, (1 - s) * np.sqrt(7 / 8), s * r8 / (s * r8 + 1 - s)), abs=1e-15
    )
    assert 1 - e == pytest.approx(varsigma(1 - s, 2.0), abs=1e-15)


def test_block_correlations():
    assert block_correlation(4) == pytest.approx(-1 / 3, abs=1e-14)
    assert block_correlation(8) == pytest.approx(-1 / 7, abs=1e-14)


def test_code_constants():
    """Pyramid Flow's scheduler defaults: alpha 0.59988 / beta 0.69303 and 0.74963 / 0.43366."""
    jumps, windows = stage_constants()
    got = [(round(j.alpha, 5), round(j.beta, 5)) for j in jumps]
    assert got == [(0.59988, 0.69303), (0.74963, 0.43366)]
    assert [round(j.corrected_start_sigma, 5) for j in jumps] == [0.80024, 0.50075]
    assert windows.boundaries[1:3] == pytest.approx((0.50075, 0.88904), abs=1e-5)


def test_avgpool_jump_is_orthonormal_up_noisy_in_natural_units():
    """a * Up(y) + b * n_hf (natural units) equals up_noisy of the orthonormal state, scaled by c."""
    rng = np.random.default_rng(0)
    transition = Resampler("haar", (1, 2, 2), first_frame=False)
    avg = Resampler("avgpool", (1, 2, 2), first_frame=False)
    s = 0.3
    a, b, e = jump_coefficients(s, 4)
    y_nat = rng.standard_normal((1, 2, 3, 4, 4))  # coarse state at natural level 1 - e
    w = rng.standard_normal((1, 2, 3, 8, 8))
    sigma = 1 - s
    c = 2 * (1 - sigma) + sigma  # orthonormal coarse state = c * natural state (gain 2)
    ortho = transition.up_noisy(c * y_nat, sigma, w)
    natural = a * avg.up(y_nat, w.shape) + b * high_band_unit_noise(transition, w)
    np.testing.assert_allclose(natural, ortho, atol=1e-13)
    # the block noise has unit variance and -1/3 correlation inside each 2x2 block
    n = high_band_unit_noise(transition, rng.standard_normal((20000, 1, 1, 2, 2))).reshape(-1, 4)
    cov = n.T @ n / len(n)
    assert np.abs(np.diag(cov) - 1).max() < 0.05
    assert np.abs(cov[~np.eye(4, dtype=bool)] + 1 / 3).max() < 0.05
