"""Natural noise level varsigma (theory §§3.1, 3.3).

Statement: for g > 0, vs(sigma, g) = sigma / (sigma + g (1 - sigma)) has vs(0) = 0, vs(1) = 1,
d vs / d sigma = g / (sigma + g (1 - sigma))^2 > 0 on [0, 1], inverse
sigma = g vs / (1 - vs + g vs); Wan's shift k s / (1 + (k - 1) s) = vs(s, 1/k); and with
x = (1 - sigma) g a0 + sigma eps, c = g (1 - sigma) + sigma: x / c = (1 - vs) a0 + vs eps.
"""

import sympy as sp

from ._core import assert_positive, assert_zero, derivation


def vs(sigma, g):
    return sigma / (sigma + g * (1 - sigma))


def sigma_from_vs(v, g):
    return g * v / (1 - v + g * v)


def prove():
    sigma, v, a0, eps = sp.symbols("sigma v a0 eps")
    g, k, u = sp.symbols("g k u", positive=True)
    assert_zero(vs(0, g), "vs(0) = 0")
    assert_zero(vs(1, g) - 1, "vs(1) = 1")
    dvs = sp.diff(vs(sigma, g), sigma)
    assert_zero(dvs - g / (sigma + g * (1 - sigma)) ** 2, "d vs / d sigma = g / (sigma + g (1 - sigma))^2")
    # sigma = u / (1 + u), u > 0 covers (0, 1); the endpoints have denominators g and 1.
    assert_positive(dvs.subs(sigma, u / (1 + u)), "d vs / d sigma > 0 on (0, 1)")
    for end in (0, 1):
        assert_positive(dvs.subs(sigma, end), f"d vs / d sigma > 0 at sigma = {end}")
    assert_zero(sigma_from_vs(vs(sigma, g), g) - sigma, "sigma(vs(sigma)) = sigma")
    assert_zero(vs(sigma_from_vs(v, g), g) - v, "vs(sigma(vs)) = vs")
    s = sp.Symbol("s")
    assert_zero(k * s / (1 + (k - 1) * s) - vs(s, 1 / k), "Wan shift k s / (1 + (k - 1) s) = vs(s, 1/k)")
    x = (1 - sigma) * g * a0 + sigma * eps
    c = g * (1 - sigma) + sigma
    assert_zero(x / c - ((1 - vs(sigma, g)) * a0 + vs(sigma, g) * eps), "x / c = (1 - vs) a0 + vs eps")
    return derivation(
        "vs = sigma / (sigma + g (1 - sigma)), g > 0: a strictly increasing bijection of [0, 1].",
        "vs(0) = 0, vs(1) = 1; d vs / d sigma = g / (sigma + g (1 - sigma))^2 > 0 (denominator a convex mix of 1, g).",
        "Inverse sigma = g vs / (1 - vs + g vs): composes to the identity both ways.",
        "Wan's shift k s / (1 + (k - 1) s) = vs(s, 1/k).",
        "x = (1 - sigma) g a0 + sigma eps, c = g (1 - sigma) + sigma: x / c = (1 - vs) a0 + vs eps (vs = sigma / c).",
    )
