"""Distribution tests: exact-velocity pyramidal sampling reproduces a Gaussian video model.

Two complementary checks per case (S = 2 and 3, ``haar`` and ``dct``, Definitions 1 and 2):

1. Deterministic. With exact velocities the sampler is linear in its noises, so pushing identity
   bases through it gives the exact covariance of its output. That covariance converges to the
   data covariance at first order in the step size (Euler), so the pyramid transports noise to
   the data law (theory §3, property 4).
2. Monte Carlo, with a stated false-failure rate. Samples drawn with a seeded Generator are
   whitened by the exact output covariance of step 1; under the null every whitened coordinate,
   in the standard basis and in one random rotation, is N(0, 1), so its sum of squares is
   chi-square with n degrees of freedom and its mean is normal. All 3N two-sided tests run at
   level ALPHA / (3N) (Bonferroni), so a correct sampler fails with probability at most ALPHA.
   A sampler that forgets the transition noise is rejected by the same test (it can fail).
"""

import numpy as np
import pytest
from scipy import stats

from pyrflow_ref.gaussian import GaussianVideoModel, LinearPatchEncoder, power_law_covariance
from pyrflow_ref.resample import TRANSITION_FAMILIES, Pyramid
from pyrflow_ref.samplers import sample_euler
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

ALPHA = 1e-6  # false-failure rate of one Monte Carlo test
LATENT = (1, 5, 4, 4)
CASES = [(s, fam, d) for s in (2, 3) for fam in TRANSITION_FAMILIES for d in (1, 2)]


def build(stages: int, family: str, definition: int) -> tuple[GaussianVideoModel, Pyramid, StageWindows]:
    pyramid = Pyramid.uniform(family, (2, 2, 2), stages)
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES if stages == 3 else (0.6,))
    if definition == 1:
        return GaussianVideoModel.latent(power_law_covariance(LATENT), LATENT, pyramid, windows), pyramid, windows
    video = (2, 5, 8, 8)
    encoder = LinearPatchEncoder(np.random.default_rng(11).standard_normal((1, 2, 2, 2)) / 2)
    pixel = Pyramid.uniform("avgpool", (2, 2, 2), stages)
    model = GaussianVideoModel.pixel(power_law_covariance(video, alpha=1.5), video, encoder, pixel, pyramid, windows)
    return model, pyramid, windows


def sampler_covariance(model, pyramid, windows, steps) -> np.ndarray:
    """Exact covariance of ``sample_euler``'s output: the sum over its noise sources of M M^T."""
    top = pyramid.num_stages - 1
    sources = [top, *range(top - 1, -1, -1)]  # initial noise, then one transition per finer stage
    total = 0.0
    for k, stage in enumerate(sources):
        n = int(np.prod(model.shapes[stage]))
        basis = np.eye(n).reshape(n, *model.shapes[stage])
        order = iter(range(1, len(sources)))

        def draw(shape, k=k, basis=basis, order=order):
            return basis if next(order) == k else np.zeros(shape)

        start = basis if k == 0 else np.zeros((n, *model.shapes[top]))
        out = sample_euler(model, start, pyramid, windows, steps, rng=draw).reshape(n, -1)
        total = total + out.T @ out
    return total


def gaussian_test(samples: np.ndarray, cov: np.ndarray, seed: int) -> float:
    """Smallest Bonferroni-scaled p-value of the whitened chi-square and mean tests (reject if < ALPHA)."""
    n, dim = samples.shape
    w, v = np.linalg.eigh(cov)
    z = samples @ v / np.sqrt(w)  # whitened: N(0, I) under the null
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    p = []
    for u in (z, z @ (q * np.sign(np.diag(r)))):
        ss = np.sum(u**2, axis=0)
        p.append(2 * np.minimum(stats.chi2.cdf(ss, n), stats.chi2.sf(ss, n)))
    p.append(2 * stats.norm.sf(np.abs(z.mean(axis=0)) * np.sqrt(n)))
    return float(np.min(np.concatenate(p)) * 3 * dim)


@pytest.mark.parametrize("stages,family,definition", CASES)
def test_exact_sampler_covariance_converges_to_data(stages, family, definition):
    """Euler error halves with the step size, and Richardson extrapolation lands on the data covariance."""
    model, pyramid, windows = build(stages, family, definition)
    target = model.data_covariance()
    covs = {n: sampler_covariance(model, pyramid, windows, (n,) * stages) for n in (16, 32, 64)}
    err = {n: np.abs(c - target).max() / np.abs(target).max() for n, c in covs.items()}
    assert 1.7 < err[16] / err[32] < 2.3 and 1.7 < err[32] / err[64] < 2.3, err
    richardson = np.abs(2 * covs[64] - covs[32] - target).max() / np.abs(target).max()
    assert richardson < err[64] / 8, (richardson, err)


@pytest.mark.slow
@pytest.mark.parametrize("stages,family,definition", CASES)
def test_monte_carlo_samples_follow_exact_law(stages, family, definition):
    model, pyramid, windows = build(stages, family, definition)
    steps = (24,) * stages
    cov = sampler_covariance(model, pyramid, windows, steps)
    rng = np.random.default_rng(1000 + 10 * stages + definition)
    n = 10000
    noise = rng.standard_normal((n, *model.shapes[-1]))
    samples = sample_euler(model, noise, pyramid, windows, steps, rng=rng).reshape(n, -1)
    assert gaussian_test(samples, cov, seed=stages) >= ALPHA
    # the same test rejects a sampler whose transitions add no high-band noise
    broken = sample_euler(model, noise, pyramid, windows, steps, rng=lambda shape: np.zeros(shape)).reshape(n, -1)
    assert gaussian_test(broken, cov, seed=stages) < ALPHA


def test_gaussian_test_has_its_stated_size():
    """Under the null, the rejection rate at level 0.1 stays at most 0.1 (plus 3 binomial sd)."""
    rng = np.random.default_rng(5)
    cov = power_law_covariance((1, 2, 2, 2))
    chol = np.linalg.cholesky(cov)
    p = [gaussian_test(rng.standard_normal((500, 8)) @ chol.T, cov, seed=k) for k in range(200)]
    assert np.mean(np.array(p) < 0.1) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 200)
