"""Spectral calibration of the stage boundaries (theory §3.2).

Statement: for band energy E > 0 and threshold tau > 0 the band SNR (1 - sigma)^2 E / sigma^2 is
strictly decreasing on (0, 1) and equals tau at exactly one sigma in (0, 1), namely
sigma = 1 / (1 + sqrt(tau / E)); this boundary increases with E (a band with more energy is
drowned later, i.e. at a noisier level).
"""

import sympy as sp

from ._core import assert_positive, assert_zero, derivation


def prove():
    sigma = sp.Symbol("sigma")
    energy, tau, u = sp.symbols("E tau u", positive=True)
    snr = (1 - sigma) ** 2 * energy / sigma**2
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
    return derivation(
        "(1 - sigma)^2 E / sigma^2 = tau has the unique root sigma = 1 / (1 + sqrt(tau / E)) in (0, 1).",
        "With u = (1 - sigma)/sigma (a bijection (0, 1) -> (0, oo)), SNR = E u^2; E u^2 = tau has one positive root.",
        "d SNR / d sigma = -2 E (1 - sigma) / sigma^3 < 0: strictly decreasing.",
        "d sigma* / d E = sqrt(tau / E) / (2 E (1 + sqrt(tau / E))^2) > 0: more band energy, noisier boundary.",
    )
