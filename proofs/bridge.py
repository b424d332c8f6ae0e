"""Velocity bridge between natural and pyramidal units (theory §3.1).

Statement: with x = (1 - sigma) g a0 + sigma eps, c = g (1 - sigma) + sigma, vs = sigma / c and
v_hat = eps - a0: dx/dsigma = (1 - g)(x / c) + ((1 - vs) + g vs) v_hat = eps - g a0; inversely
v_hat = (dx/dsigma - (1 - g) x / c) / ((1 - vs) + g vs); g = 1 makes both maps the identity.
The maps are pyrflow_ref.natural.bridge_velocity and natural_velocity, evaluated on SymPy symbols.
"""

import sympy as sp

from pyrflow_ref import natural

from ._core import assert_zero, derivation


def prove():
    sigma, g, a0, eps, v = sp.symbols("sigma g a0 eps v")
    x = (1 - sigma) * g * a0 + sigma * eps
    c = g * (1 - sigma) + sigma
    vs = sigma / c
    weight = (1 - vs) + g * vs
    v_hat = eps - a0

    def to_pyramidal(v_nat, g_=g):
        return natural.bridge_velocity(x, sigma, g, v_nat).subs(g, g_)

    def to_natural(dx, g_=g):
        return natural.natural_velocity(x, sigma, g, dx).subs(g, g_)

    assert_zero(to_pyramidal(v) - ((1 - g) * (x / c) + weight * v), "pyrflow_ref bridge_velocity = closed form")
    assert_zero(to_natural(v) - (v - (1 - g) * x / c) / weight, "pyrflow_ref natural_velocity = closed form")
    assert_zero(sp.diff(x, sigma) - (eps - g * a0), "dx/dsigma of x = (1 - sigma) g a0 + sigma eps is eps - g a0")
    assert_zero(to_pyramidal(v_hat) - (eps - g * a0), "bridge(v_hat) = eps - g a0")
    assert_zero(to_natural(eps - g * a0) - v_hat, "inverse bridge(eps - g a0) = v_hat")
    assert_zero(natural.natural_velocity(x, sigma, g, to_pyramidal(v)) - v, "inverse o bridge = id")
    assert_zero(weight - g / c, "(1 - vs) + g vs = g / c")
    assert_zero(to_pyramidal(v, 1) - v, "g = 1: bridge is the identity")
    assert_zero(to_natural(v, 1) - v, "g = 1: inverse bridge is the identity")
    return derivation(
        "dx/dsigma = (1 - g)(x / c) + ((1 - vs) + g vs) v_hat, exact and invertible.",
        "pyrflow_ref.natural.bridge_velocity / natural_velocity evaluated symbolically are these maps.",
        "x / c = (1 - vs) a0 + vs eps and (1 - vs) + g vs = g / c, so with v_hat = eps - a0:",
        "(1 - g)((1 - vs) a0 + vs eps) + (g / c)(eps - a0) = eps - g a0 = d/dsigma[(1 - sigma) g a0 + sigma eps].",
        "Inverse: v_hat = (dx/dsigma - (1 - g) x / c) / ((1 - vs) + g vs), composes to the identity;"
        " g = 1: identity maps.",
    )
