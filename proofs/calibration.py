"""Spectral calibration of the stage boundaries (theory §3.2).

Statement: for band energy E > 0 and threshold tau > 0 the band SNR (1 - sigma)^2 E / sigma^2 is
strictly decreasing on (0, 1) and equals tau at exactly one sigma in (0, 1), namely
sigma = 1 / (1 + sqrt(tau / E)); this boundary increases with E (a band with more energy is
drowned later, i.e. at a noisier level). The SNR is pyrflow_ref.calibration.threshold_for
(symbolically) and calibrate_boundaries (float64) puts every boundary at this root.
"""

import numpy as np
import sympy as sp

from pyrflow_ref import calibration

from ._core import assert_close, assert_positive, assert_zero, derivation

DRAWS = 100


def _check_code(rng, boundary):
    """calibrate_boundaries(energies, tau) at random tau and increasing energies (1 to 3 bands), log-uniform."""
    for _ in range(DRAWS):
        tau = 10 ** rng.uniform(-2, 1)
        energies = np.sort(10 ** rng.uniform(-3, 1, rng.integers(1, 4)))
        code = calibration.calibrate_boundaries(energies.tolist(), tau).boundaries
        assert_close(code, [0, *boundary(tau, energies), 1], f"calibrate_boundaries({energies.tolist()}, {tau:.4g})")


def prove():
    sigma = sp.Symbol("sigma")
    energy, tau, u = sp.symbols("E tau u", positive=True)
    snr = calibration.threshold_for(energy, sigma)
    assert_zero(snr - (1 - sigma) ** 2 * energy / sigma**2, "pyrflow_ref threshold_for = (1 - sigma)^2 E / sigma^2")
    # sigma = 1 / (1 + u) maps u in (0, oo) one-to-one onto sigma in (0, 1), with u = (1 - sigma) / sigma.
    on_interval = sp.simplify(snr.subs(sigma, 1 / (1 + u)))
    assert_zero(on_interval - energy * u**2, "SNR = E u^2 with u = (1 - sigma)/sigma")
    dsnr = sp.diff(snr, sigma)
    assert_zero(dsnr + 2 * energy * (1 - sigma) / sigma**3, "d SNR / d sigma = -2 E (1 - sigma) / sigma^3")
    assert_positive(-dsnr.subs(sigma, 1 / (1 + u)), "d SNR / d sigma < 0 on (0, 1)")
    roots = sp.solve(energy * u**2 - tau, u)  # u is declared positive: only admissible roots
    if len(roots) != 1:
        raise AssertionError(f"SNR = tau has positive roots {roots}, expected exactly one")
    assert_zero(roots[0] - sp.sqrt(tau / energy), "the root is u = sqrt(tau / E)")
    boundary = 1 / (1 + sp.sqrt(tau / energy))
    assert_zero(1 / (1 + roots[0]) - boundary, "sigma = 1 / (1 + sqrt(tau / E))")
    assert_zero(snr.subs(sigma, boundary) - tau, "SNR(boundary) = tau")
    assert_positive(boundary, "boundary > 0")
    assert_positive(1 - boundary, "boundary < 1")
    q = sp.sqrt(tau / energy)
    assert_zero(sp.diff(boundary, energy) - q / (2 * energy * (1 + q) ** 2), "d boundary / d E formula")
    assert_positive(sp.diff(boundary, energy), "d boundary / d E > 0")
    _check_code(np.random.default_rng(3), sp.lambdify((tau, energy), boundary, "numpy"))
    return derivation(
        "(1 - sigma)^2 E / sigma^2 = tau has the unique root sigma = 1 / (1 + sqrt(tau / E)) in (0, 1).",
        "With u = (1 - sigma)/sigma (a bijection (0, 1) -> (0, oo)), SNR = E u^2; E u^2 = tau has one positive root.",
        "d SNR / d sigma = -2 E (1 - sigma) / sigma^3 < 0: strictly decreasing.",
        "d sigma* / d E = sqrt(tau / E) / (2 E (1 + sqrt(tau / E))^2) > 0: more band energy, noisier boundary.",
        f"pyrflow_ref: threshold_for is this SNR (symbolically); calibrate_boundaries puts each boundary at"
        f" 1 / (1 + sqrt(tau / E_i)) ({DRAWS} random draws, 1e-12).",
    )
