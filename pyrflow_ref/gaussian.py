r"""Analytic Gaussian video models with the exact posterior velocity.

If the clean stage signals are linear in a Gaussian :math:`z \sim N(\mu, \Sigma)`,
:math:`x_0^{(i)} = K_i z`, then inside stage :math:`i` the sample is
:math:`x = B(\sigma) z + \sigma \epsilon` with

.. math::

    B(\sigma) = (1 - \rho)(1 - \sigma_c) K_i + \rho (1 - \sigma_n)\, U_i K_{i+1}

(:math:`U_i` = ``up`` of transition :math:`i`), the target is :math:`B'(\sigma) z + \epsilon`, and the
exact posterior velocity is linear in :math:`x`:

.. math::

    E\Big[\frac{dx}{d\sigma} \Big| x\Big] = B'\mu + \big(B' \Sigma B^\top + \sigma I\big)
    \big(B \Sigma B^\top + \sigma^2 I\big)^{-1} (x - B \mu)

Definition 1 takes :math:`z = x_0^{(0)}` and :math:`K_{i+1} = L K_i`; Definition 2 takes
:math:`z` = the pixel video and :math:`K_i` = gain x encoder x pixel downsampling. The plain
process is the single-stage case. Every model here satisfies the sampler contract of
:mod:`pyrflow_ref.samplers` (``model(x_nat, t, cond) -> v_hat``), so sampling it with exact
velocities tests the whole pyramid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .natural import natural_velocity, per_frame, scale_c, sigma_from_varsigma
from .process import clean_pyramid_latent, clean_pyramid_pixel, rho
from .resample import Pyramid, _apply, dct2_matrix
from .windows import StageWindows


def linear_map(fn: Callable[[np.ndarray], np.ndarray], in_shape: tuple[int, ...]) -> np.ndarray:
    """Matrix ``M`` of a batched linear ``fn`` on per-sample arrays of ``in_shape``: ``fn(z) = M z``."""
    n = int(np.prod(in_shape))
    out = np.asarray(fn(np.eye(n).reshape(n, *in_shape)))
    return out.reshape(n, -1).T


def power_law_covariance(
    shape: tuple[int, int, int, int], alpha: float = 2.0, temporal_corr: float = 0.8, channel_cov=None
) -> np.ndarray:
    r"""Dense covariance of a ``(C, F, H, W)`` video: power-law spatial spectrum, AR(1) in time.

    Spatial axes: variance :math:`(1 + k)^{-\alpha}` on DCT frequency :math:`k`; time:
    correlation ``temporal_corr ** |i - j|``; channels: ``channel_cov`` (identity by default).
    Separable (Kronecker) and scaled to unit mean variance.
    """
    c, f, h, w = shape

    def spatial(n):
        m = dct2_matrix(n)
        return m.T @ np.diag((1.0 + np.arange(n)) ** -alpha) @ m

    idx = np.arange(f)
    cov = np.eye(c) if channel_cov is None else np.asarray(channel_cov, dtype=np.float64)
    for part in (temporal_corr ** np.abs(idx[:, None] - idx[None, :]), spatial(h), spatial(w)):
        cov = np.kron(cov, part)
    return cov / np.mean(np.diag(cov))


class LinearPatchEncoder:
    r"""A linear stand-in for the VAE: each ``(s_H, s_W)`` pixel patch maps linearly to one latent.

    :param weight: ``(C_lat, C_pix, s_H, s_W)``. Time is not strided, so the first-frame rule of
        the pixel pyramid carries over to the latent frames unchanged.
    """

    def __init__(self, weight: np.ndarray):
        self.weight = np.asarray(weight, dtype=np.float64)

    def __call__(self, video: np.ndarray) -> np.ndarray:
        b, cp, f, h, w = video.shape
        _, _, sh, sw = self.weight.shape
        if h % sh or w % sw:
            raise ValueError(f"pixel size {h}x{w} is not divisible by the encoder stride {sh}x{sw}")
        patches = video.reshape(b, cp, f, h // sh, sh, w // sw, sw)
        return np.einsum("bpfhiwj,cpij->bcfhw", patches, self.weight)


class GaussianVideoModel:
    """Dense Gaussian model of the pyramidal process; exact posterior velocity by linear algebra.

    :param cov: covariance of the underlying Gaussian ``z`` (flattened).
    :param mean: mean of ``z`` (zero by default); ``cov = 0`` makes the data a point mass.
    :param clean_maps: ``K_i`` per stage, ``x0^(i) = K_i z`` (flattened per sample).
    :param shapes: per-sample shape ``(C, F, H, W)`` of every stage, finest first.
    :param pyramid: the latent pyramid (``up`` of each transition and the per-frame gains).
    :param windows: the stage windows the model is sampled with.
    """

    def __init__(
        self,
        cov: np.ndarray,
        clean_maps: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        pyramid: Pyramid,
        windows: StageWindows,
        mean: np.ndarray | None = None,
    ):
        if not (len(clean_maps) == len(shapes) == pyramid.num_stages == windows.num_stages):
            raise ValueError("clean_maps, shapes, pyramid and windows must have one entry per stage")
        self.cov = np.asarray(cov, dtype=np.float64)
        self.mean = np.zeros(len(self.cov)) if mean is None else np.asarray(mean, dtype=np.float64).ravel()
        self.shapes = [tuple(s) for s in shapes]
        if len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"stage shapes {self.shapes} are not distinct; the model finds the stage by shape")
        self.pyramid, self.windows = pyramid, windows
        self.clean_maps = [np.asarray(k, dtype=np.float64) for k in clean_maps]
        # U_i K_{i+1}: the coarser stage's signal brought up to stage i.
        self.up_maps = [
            linear_map(lambda y, i=i: pyramid.transitions[i].up(y, (len(y), *self.shapes[i])), self.shapes[i + 1])
            @ self.clean_maps[i + 1]
            for i in range(pyramid.num_stages - 1)
        ]
        self.up_maps.append(np.zeros_like(self.clean_maps[-1]))
        self._posterior_cache: dict[tuple[float, int], np.ndarray] = {}

    @classmethod
    def latent(cls, cov: np.ndarray, shape: tuple[int, ...], pyramid: Pyramid, windows: StageWindows, mean=None):
        """Definition 1: ``cov`` (and ``mean``) describe the stage-0 latent of per-sample ``shape``."""
        shapes = [s[1:] for s in pyramid.shapes((1, *shape))]
        maps = [
            linear_map(lambda z, i=i: clean_pyramid_latent(z, pyramid)[i], tuple(shape)) for i in range(len(shapes))
        ]
        return cls(cov, maps, shapes, pyramid, windows, mean)

    @classmethod
    def pixel(
        cls,
        cov: np.ndarray,
        video_shape: tuple[int, ...],
        encode: Callable[[np.ndarray], np.ndarray],
        pixel_pyramid: Pyramid,
        pyramid: Pyramid,
        windows: StageWindows,
        mean=None,
    ):
        """Definition 2: ``cov`` (and ``mean``) describe the pixel video of per-sample ``video_shape``."""

        def stage_video(z, i):
            return clean_pyramid_pixel(z, pyramid, encode, pixel_pyramid)[i]

        probe = clean_pyramid_pixel(np.zeros((1, *video_shape)), pyramid, encode, pixel_pyramid)
        shapes = [p.shape[1:] for p in probe]
        maps = [linear_map(lambda z, i=i: stage_video(z, i), tuple(video_shape)) for i in range(len(shapes))]
        return cls(cov, maps, shapes, pyramid, windows, mean)

    # --------------------------------------------------------------- the process
    def coefficients(self, sigma: float, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B, dB/dsigma)`` with ``x = B z + sigma eps`` inside ``stage``."""
        sc, sn = self.windows.sigma_c(stage), self.windows.sigma_n(stage)
        r = rho(sigma, sc, sn)
        k, u = self.clean_maps[stage], self.up_maps[stage]
        b = (1 - r) * (1 - sc) * k + r * (1 - sn) * u
        db = (-(1 - sc) * k + (1 - sn) * u) / (sn - sc)
        return b, db

    def stage_covariance(self, sigma: float, stage: int) -> np.ndarray:
        """Covariance of the stage sample at ``sigma``."""
        b, _ = self.coefficients(sigma, stage)
        return b @ self.cov @ b.T + sigma**2 * np.eye(len(b))

    def data_mean(self, stage: int = 0) -> np.ndarray:
        """Mean of the clean signal of ``stage`` (flattened)."""
        return self.clean_maps[stage] @ self.mean

    def data_covariance(self, stage: int = 0) -> np.ndarray:
        """Covariance of the clean signal of ``stage`` (what sampling must reproduce at stage 0)."""
        k = self.clean_maps[stage]
        return k @ self.cov @ k.T

    def posterior_matrix(self, sigma: float, stage: int) -> np.ndarray:
        """``A`` with ``E[dx/dsigma | x] = B' mu + A (x - B mu)`` (cached: samplers revisit their grids)."""
        key = (float(sigma), stage)
        if key not in self._posterior_cache:
            self._posterior_cache[key] = self._posterior_matrix(*key)
        return self._posterior_cache[key]

    def _posterior_matrix(self, sigma: float, stage: int) -> np.ndarray:
        b, db = self.coefficients(sigma, stage)
        cross = db @ self.cov @ b.T + sigma * np.eye(len(b))
        return np.linalg.solve(self.stage_covariance(sigma, stage), cross.T).T

    def posterior_velocity(self, x: np.ndarray, sigma, stage: int) -> np.ndarray:
        """Exact ``E[dx/dsigma | x] = B' mu + A (x - B mu)`` for a batch ``x`` (``sigma`` scalar or ``(B,)``)."""
        flat = x.reshape(len(x), -1)
        sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(x),))
        out = np.empty_like(flat)
        for s in np.unique(sig):
            rows = sig == s
            b, db = self.coefficients(float(s), stage)
            out[rows] = db @ self.mean + (flat[rows] - b @ self.mean) @ self.posterior_matrix(float(s), stage).T
        return out.reshape(x.shape)

    # --------------------------------------------------------------- sampler contract
    def __call__(self, x_nat: np.ndarray, t: np.ndarray, cond=None) -> np.ndarray:
        stage = self._stage(x_nat.shape)
        g = self.pyramid.gain(stage, x_nat.shape[-3])
        sigma = _sigma_from_timesteps(t, g)
        s, gg = per_frame(sigma, g, x_nat.ndim)
        x = x_nat * scale_c(s, gg)
        return natural_velocity(x, s, gg, self.posterior_velocity(x, sigma, stage))

    def _stage(self, shape) -> int:
        try:
            return self.shapes.index(tuple(shape[1:]))
        except ValueError:
            raise ValueError(f"input shape {tuple(shape)} matches no stage shape of {self.shapes}") from None

    def sample_clean(self, rng: np.random.Generator, n: int, stage: int = 0) -> np.ndarray:
        """``n`` clean signals of ``stage``."""
        w, v = np.linalg.eigh(self.cov)
        z = self.mean + rng.standard_normal((n, len(w))) * np.sqrt(np.clip(w, 0, None)) @ v.T
        return (z @ self.clean_maps[stage].T).reshape(n, *self.shapes[stage])


def _sigma_from_timesteps(t: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Per-sample global level from per-frame timesteps; all frames of a sample must agree."""
    sig = sigma_from_varsigma(np.asarray(t, dtype=np.float64) / 1000.0, g[None, :])
    if not np.allclose(sig, sig[:, :1], rtol=1e-9, atol=1e-12):
        raise ValueError("per-frame timesteps do not describe one global noise level per sample")
    return sig[:, 0]


class SpectralGaussianVideo:
    r"""Power-law Gaussian video that is diagonal in the DCT basis: exact velocity in a few matmuls.

    With the ``dct`` resampler and no first-frame rule, every stage's DCT coefficients are the
    lowest coefficients of the full-resolution DCT and every projection :math:`P` is a coefficient
    mask, so the posterior velocity is elementwise in DCT space (channels rotated to the eigenbasis
    of ``channel_cov``). Variance of frequency :math:`(k_f, k_h, k_w)`:
    :math:`(1 + k_f)^{-\beta} (1 + k_h + k_w)^{-\alpha}`, scaled to unit mean. Same process as
    :class:`GaussianVideoModel` with that covariance, at any size.
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        pyramid: Pyramid,
        windows: StageWindows,
        alpha: float = 2.5,
        beta: float = 1.5,
        channel_cov=None,
    ):
        for transition in pyramid.transitions:
            if transition.family != "dct" or transition.first_frame:
                raise ValueError("SpectralGaussianVideo needs 'dct' transitions without the first-frame rule")
        if pyramid.num_stages != windows.num_stages:
            raise ValueError(f"pyramid has {pyramid.num_stages} stages but the windows have {windows.num_stages}")
        self.pyramid, self.windows = pyramid, windows
        self.shapes = [s[1:] for s in pyramid.shapes((1, *shape))]
        c, f, h, w = shape
        kf, kh, kw = np.ogrid[:f, :h, :w]
        lam = (1.0 + kf) ** -beta * (1.0 + kh + kw) ** -alpha
        self.lam = lam / lam.mean()
        mu, self.q = np.linalg.eigh(np.eye(c) if channel_cov is None else np.asarray(channel_cov, dtype=np.float64))
        self.mu = np.clip(mu, 0, None) / np.mean(np.clip(mu, 0, None))

    def _to_coeffs(self, x: np.ndarray) -> np.ndarray:
        x = np.einsum("dc,bc...->bd...", self.q.T, x)
        for axis in (-3, -2, -1):
            x = _apply(x, dct2_matrix(x.shape[axis]), axis)
        return x

    def _from_coeffs(self, x: np.ndarray) -> np.ndarray:
        for axis in (-3, -2, -1):
            x = _apply(x, dct2_matrix(x.shape[axis]).T, axis)
        return np.einsum("cd,bd...->bc...", self.q, x)

    def covariance_diagonal(self, stage: int) -> np.ndarray:
        """Variances of the stage-``stage`` clean signal's coefficients (channel eigenbasis x DCT)."""
        f, h, w = self.shapes[stage][1:]
        return self.mu[:, None, None, None] * self.lam[:f, :h, :w]

    def posterior_velocity(self, x: np.ndarray, sigma: float, stage: int) -> np.ndarray:
        """Exact ``E[dx/dsigma | x]`` (scalar ``sigma``)."""
        sc, sn = self.windows.sigma_c(stage), self.windows.sigma_n(stage)
        r = float(rho(sigma, sc, sn))
        lam = self.covariance_diagonal(stage)
        low = np.zeros(lam.shape, dtype=bool)
        if stage + 1 < len(self.shapes):
            f, h, w = self.shapes[stage + 1][1:]
            low[:, :f, :h, :w] = True
        # Low band: x_k = (1 - sigma) z_k + ...; high band fades in: (1 - rho)(1 - sigma_c) z_k + ...
        b = np.where(low, 1 - sigma, (1 - r) * (1 - sc))
        db = np.where(low, -1.0, -(1 - sc) / (sn - sc))
        gain = (db * lam * b + sigma) / (b * b * lam + sigma**2)
        return self._from_coeffs(gain * self._to_coeffs(x))

    def __call__(self, x_nat: np.ndarray, t: np.ndarray, cond=None) -> np.ndarray:
        stage = self.shapes.index(tuple(x_nat.shape[1:]))
        g = self.pyramid.gain(stage, x_nat.shape[-3])
        sigma = _sigma_from_timesteps(t, g)
        if not np.allclose(sigma, sigma[0]):
            raise ValueError("SpectralGaussianVideo expects one noise level per batch")
        s, gg = per_frame(sigma, g, x_nat.ndim)
        x = x_nat * scale_c(s, gg)
        return natural_velocity(x, s, gg, self.posterior_velocity(x, float(sigma[0]), stage))

    def sample_clean(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` clean full-resolution videos."""
        z = rng.standard_normal((n, *self.shapes[0])) * np.sqrt(self.covariance_diagonal(0))
        return self._from_coeffs(z)

    def dense_covariance(self) -> np.ndarray:
        """The full-resolution covariance as a dense matrix (small shapes; for tests)."""
        c, f, h, w = self.shapes[0]
        basis = np.eye(c * f * h * w).reshape(-1, c, f, h, w)
        coeffs = self._to_coeffs(basis).reshape(len(basis), -1)
        return coeffs @ np.diag(self.covariance_diagonal(0).ravel()) @ coeffs.T
