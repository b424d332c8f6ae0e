"""Natural noise level varsigma (theory §§3.1, 3.3).

Statement: for g > 0, vs(sigma, g) = sigma / (sigma + g (1 - sigma)) has vs(0) = 0, vs(1) = 1,
d vs / d sigma = g / (sigma + g (1 - sigma))^2 > 0 on [0, 1], inverse
sigma = g vs / (1 - vs + g vs); Wan's shift k s / (1 + (k - 1) s) = vs(s, 1/k); and with
x = (1 - sigma) g a0 + sigma eps, c = g (1 - sigma) + sigma: x / c = (1 - vs) a0 + vs eps.
Every function is pyrflow_ref's own (natural.varsigma, sigma_from_varsigma, scale_c and
windows.shift_sigma / unshift_sigma), evaluated on SymPy symbols: they are plain arithmetic.
"""

import sympy as sp

from pyrflow_ref import natural, windows

from ._core import assert_positive, assert_zero, derivation


def prove():
    sigma, v, a0, eps, s = sp.symbols("sigma v a0 eps s")
    g, k, u = sp.symbols("g k u", positive=True)
    vs = natural.varsigma(sigma, g)
    assert_zero(vs - sigma / (sigma + g * (1 - sigma)), "pyrflow_ref varsigma = sigma / (sigma + g (1 - sigma))")
    inverse = natural.sigma_from_varsigma(v, g)
    assert_zero(inverse - g * v / (1 - v + g * v), "pyrflow_ref sigma_from_varsigma = g vs / (1 - vs + g vs)")
    c = natural.scale_c(sigma, g)
    assert_zero(c - (g * (1 - sigma) + sigma), "pyrflow_ref scale_c = g (1 - sigma) + sigma")

    assert_zero(natural.varsigma(0, g), "vs(0) = 0")
    assert_zero(natural.varsigma(1, g) - 1, "vs(1) = 1")
    dvs = sp.diff(vs, sigma)
    assert_zero(dvs - g / (sigma + g * (1 - sigma)) ** 2, "d vs / d sigma = g / (sigma + g (1 - sigma))^2")
    # sigma = u / (1 + u), u > 0 covers (0, 1); the endpoints have denominators g and 1.
    assert_positive(dvs.subs(sigma, u / (1 + u)), "d vs / d sigma > 0 on (0, 1)")
    for end in (0, 1):
        assert_positive(dvs.subs(sigma, end), f"d vs / d sigma > 0 at sigma = {end}")
    assert_zero(natural.sigma_from_varsigma(vs, g) - sigma, "sigma(vs(sigma)) = sigma")
    assert_zero(natural.varsigma(inverse, g) - v, "vs(sigma(vs)) = vs")
    # shift_sigma writes the gain as 1.0 / k; as an exact number 1.0 is 1.
    shifted = sp.nsimplify(windows.shift_sigma(s, k), rational=True)
    assert_zero(k * s / (1 + (k - 1) * s) - shifted, "Wan shift k s / (1 + (k - 1) s) = shift_sigma(s, k) = vs(s, 1/k)")
    assert_zero(windows.unshift_sigma(shifted, k) - s, "unshift_sigma(shift_sigma(s)) = s")
    x = (1 - sigma) * g * a0 + sigma * eps
    assert_zero(x / c - ((1 - vs) * a0 + vs * eps), "x / c = (1 - vs) a0 + vs eps")
    return derivation(
        "vs = sigma / (sigma + g (1 - sigma)), g > 0: a strictly increasing bijection of [0, 1].",
        "pyrflow_ref.natural.varsigma, sigma_from_varsigma, scale_c evaluated symbolically are these formulas.",
        "vs(0) = 0, vs(1) = 1; d vs / d sigma = g / (sigma + g (1 - sigma))^2 > 0 (denominator a convex mix of 1, g).",
        "Inverse sigma = g vs / (1 - vs + g vs): composes to the identity both ways.",
        "Wan's shift k s / (1 + (k - 1) s) = vs(s, 1/k) = pyrflow_ref.windows.shift_sigma; unshift_sigma inverts it.",
        "x = (1 - sigma) g a0 + sigma eps, c = g (1 - sigma) + sigma: x / c = (1 - vs) a0 + vs eps (vs = sigma / c).",
    )
