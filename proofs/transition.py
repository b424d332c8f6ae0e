"""Stage transition equals the next stage's start in distribution (theory §3, property 3).

Statement: with T = [L; H] orthogonal and P = L^T L, let y = (1 - s) L x0 + s e_low and
up_noisy(y, s) = L^T y + s (w - L^T L w), e_low, w standard normal and independent. Then
up_noisy is Gaussian with mean (1 - s) P x0 and covariance s^2 (L^T L + (I - P)(I - P)^T) = s^2 I,
so it equals y_n = (1 - sigma_n) P x0 + sigma_n eps in distribution exactly when sigma_n = s.
pyrflow_ref's ``Resampler.up_noisy`` has exactly these loadings L^T on y and s (I - P) on w.
"""

import numpy as np
import sympy as sp

from pyrflow_ref import resample

from ._core import assert_close, assert_matrix_equal, derivation, to_float, vector
from ._resamplers import operator_matrix, separable

SHAPES = ((3, 2, 2), (5, 4, 2))
LEVELS = (0.0, 0.3, 0.75, 1.0)  # transition noise levels s at which the code's loadings are compared


def gaussian(mean, *loadings):
    """Mean and covariance of mean + sum_k B_k z_k with independent standard normal z_k."""
    return mean, sum((b * b.T for b in loadings), sp.zeros(mean.rows, mean.rows))


def _check_code_loadings(low, shape, coarse):
    """The code's up_noisy(y, s, w) is linear in (y, w): read off its loadings and compare with L^T and s (I - P)."""
    transition = resample.Resampler("haar", (2, 2, 2), first_frame=True)
    low_f = to_float(low)
    n = low.cols
    for s in LEVELS:
        on_y = operator_matrix(lambda y, s=s: transition.up_noisy(y, s, np.zeros((len(y), *shape))), coarse)
        on_w = operator_matrix(lambda w, s=s: transition.up_noisy(np.zeros((len(w), *coarse)), s, w), shape)
        assert_close(on_y, low_f.T, f"{shape}: pyrflow_ref up_noisy loading on y = L^T (s = {s})")
        assert_close(on_w, s * (np.eye(n) - low_f.T @ low_f), f"{shape}: up_noisy loading on w = s (I - P) (s = {s})")


def prove():
    s, sigma_n = sp.symbols("s sigma_n")
    for shape in SHAPES:
        _, low, coarse = separable("haar", shape)
        _check_code_loadings(low, shape, coarse)
        n = low.cols
        x0, eye, p = vector("x0", n), sp.eye(n), low.T * low
        # up_noisy((1 - s) L x0 + s e_low, s): noise loadings s L^T on e_low and s (I - P) on w
        mean_up, cov_up = gaussian(low.T * ((1 - s) * low * x0), s * low.T, s * (eye - p))
        assert_matrix_equal(mean_up, (1 - s) * p * x0, f"{shape}: E[up_noisy] = (1 - s) P x0")
        assert_matrix_equal(cov_up, s**2 * (p + (eye - p) * (eye - p).T), f"{shape}: Cov = s^2 (L^T L + (I-P)(I-P)^T)")
        assert_matrix_equal(cov_up, s**2 * eye, f"{shape}: Cov[up_noisy] = s^2 I")
        mean_n, cov_n = gaussian((1 - sigma_n) * p * x0, sigma_n * eye)
        # Both Gaussian: equal in law iff equal means (for every x0) and covariances.
        eqs = [c for entry in (mean_up - mean_n) for c in sp.Poly(sp.expand(entry), *x0).coeffs()]
        eqs += list(sp.expand(cov_up - cov_n))
        if sp.solve(eqs, sigma_n, dict=True) != [{sigma_n: s}]:
            raise AssertionError(f"{shape}: up_noisy ~ y_n is not equivalent to sigma_n = s")
    return derivation(
        "up_noisy((1 - s) L x0 + s e_low, s)  =d  (1 - sigma_n) P x0 + sigma_n eps  <=>  sigma_n = s.",
        "Linear in independent Gaussians (e_low, w) => Gaussian; loadings s L^T and s (I - P).",
        "Mean = L^T (1 - s) L x0 = (1 - s) P x0; Cov = s^2 (L^T L + (I - P)(I - P)^T) = s^2 (P + I - P) = s^2 I.",
        "y_n: mean (1 - sigma_n) P x0, Cov sigma_n^2 I; matching for every x0 solves to sigma_n = s only.",
        f"Checked exactly with symbolic s, x0 on the Haar first-frame transforms {SHAPES};"
        f" pyrflow_ref's Resampler.up_noisy has loadings L^T on y and s (I - P) on w (s = {LEVELS}, 1e-12).",
    )
