"""Spectral calibration of stage boundaries (theory §3.2)."""

import numpy as np
import pytest

from pyrflow_ref.calibration import band_energies, calibrate_boundaries, threshold_for
from pyrflow_ref.process import clean_pyramid_latent
from pyrflow_ref.resample import Pyramid
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES


def test_band_energy_of_white_noise_is_one():
    """White noise has unit energy in every band of an orthonormal pyramid."""
    rng = np.random.default_rng(0)
    e = band_energies(rng.standard_normal((8, 4, 9, 16, 16)), Pyramid.uniform("haar", (2, 2, 2), 3))
    np.testing.assert_allclose(e, 1.0, atol=0.03)


def test_smooth_signal_has_little_high_band_energy():
    t, h, w = np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    smooth = np.sin(2 * t + 3 * h + w)[None, None]
    pyramid = Pyramid.uniform("dct", (2, 2, 2), 3)
    stages = clean_pyramid_latent(smooth, pyramid)
    fractions = [
        e * (f.size - c.size) / np.sum(f**2) for e, f, c in zip(band_energies(smooth, pyramid), stages, stages[1:])
    ]
    assert max(fractions) < 0.02, fractions


def test_calibration_formula_and_inverse():
    windows = calibrate_boundaries([0.04, 0.5], tau=0.25)
    for energy, sigma in zip([0.04, 0.5], windows.boundaries[1:-1]):
        assert (1 - sigma) ** 2 * energy / sigma**2 == pytest.approx(0.25)
        assert threshold_for(energy, sigma) == pytest.approx(0.25)
    # the tau that puts the finest band at Wan's default boundary puts a band 8x as energetic near the other
    tau = threshold_for(1.0, WAN_DEFAULT_BOUNDARIES[0])
    assert calibrate_boundaries([1.0, 8.0], tau).boundaries[1] == pytest.approx(WAN_DEFAULT_BOUNDARIES[0])


@pytest.mark.parametrize(
    "energies,tau,match",
    [
        ([1.0, 0.5], 1.0, "strictly increasing"),
        ([0.0, 1.0], 1.0, "must be positive"),
        ([1.0], -1.0, "must be positive"),
    ],
)
def test_bad_input(energies, tau, match):
    with pytest.raises(ValueError, match=match):
        calibrate_boundaries(energies, tau)
