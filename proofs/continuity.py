"""Continuity of the global noise level across stages (theory §3).

Statement: the transition from stage i+1 (ended at sigma_c^(i+1) = s) produces covariance s^2 I
and mean (1 - s) P x0; stage i starts at y_n^(i) with covariance sigma_n^2 I and mean
(1 - sigma_n) P x0. For sigma_n in [0, 1] the covariances match iff sigma_n = s (unique root) and
the means match with the same value: sigma_n^(i) = sigma_c^(i+1), the global sigma is continuous.
pyrflow_ref's StageWindows gives every stage i < S - 1 the window end sigma_n^(i) = sigma_c^(i+1).
"""

import numpy as np
import sympy as sp

from pyrflow_ref import windows

from ._core import assert_zero, derivation


def _check_code_windows(rng, draws=50):
    """Random inner boundaries (1 to 4 of them): the code's window ends are shared, from 0 to 1."""
    for _ in range(draws):
        inner = np.sort(rng.uniform(0.01, 0.99, rng.integers(1, 5)))
        w = windows.StageWindows(inner.tolist())
        ends = [(w.sigma_c(i), w.sigma_n(i)) for i in range(w.num_stages)]
        if w.num_stages != len(inner) + 1 or ends[0][0] != 0.0 or ends[-1][1] != 1.0:
            raise AssertionError(f"StageWindows({inner.tolist()}) does not cover [0, 1] in {len(inner) + 1} stages")
        if any(ends[i][1] != ends[i + 1][0] for i in range(w.num_stages - 1)):
            raise AssertionError(f"StageWindows({inner.tolist()}): some sigma_n^(i) != sigma_c^(i+1)")


def prove():
    s = sp.Symbol("s", positive=True)
    t = sp.Symbol("t")  # sigma_n without assumptions, to see every root
    sigma_n = sp.Symbol("sigma_n", nonnegative=True)
    x0_low, e_low, w_high = sp.symbols("x0_low e_low w_high")
    # Band algebra (basis of T = [L; H]): up_noisy keeps s e_low in the low band and adds s H w in the high band.
    up_noisy = ((1 - s) * x0_low + s * e_low, s * w_high)
    for band, z in zip(up_noisy, (e_low, w_high)):
        assert_zero(sp.diff(band, z) ** 2 - s**2, "per-band variance of up_noisy = s^2")
    if set(sp.solve(t**2 - s**2, t)) != {s, -s}:
        raise AssertionError("roots of sigma_n^2 = s^2 are not +-s")
    # s > 0: the root -s is negative, so exactly one root is a noise level; s = 0: the only root is 0.
    if sp.solve(sigma_n**2 - s**2, sigma_n) != [s] or sp.solve(sigma_n**2, sigma_n) != [0]:
        raise AssertionError("sigma_n^2 = s^2 does not have the unique root sigma_n = s in [0, 1]")
    if sp.solve((1 - t) * x0_low - (1 - s) * x0_low, t) != [s]:
        raise AssertionError("mean match does not give sigma_n = s")
    _check_code_windows(np.random.default_rng(0))
    return derivation(
        "Cov sigma_n^2 I = s^2 I and mean (1 - sigma_n) P x0 = (1 - s) P x0  <=>  sigma_n^(i) = sigma_c^(i+1) = s.",
        "up_noisy has variance s^2 in the low band (s e_low) and in the high band (s (I - P) w).",
        "sigma_n^2 = s^2 has roots +-s; for s > 0 only s is >= 0, for s = 0 the root is 0: unique in [0, 1].",
        "Mean: (s - sigma_n) P x0 = 0 for all x0 gives the same value; so the global sigma is continuous.",
        "pyrflow_ref.windows.StageWindows: sigma_n^(i) = sigma_c^(i+1), sigma_c^(0) = 0, sigma_n^(S-1) = 1"
        " (random boundaries, exact).",
    )
