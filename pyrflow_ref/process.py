r"""The pyramidal forward process in orthonormal units (theory §3).

Inside stage :math:`i` with window :math:`[\sigma_c, \sigma_n]` and coupled white noise
:math:`\epsilon` at the stage's resolution:

.. math::

    y_c &= (1 - \sigma_c)\, x_0^{(i)} + \sigma_c \epsilon, \\
    y_n &= (1 - \sigma_n)\, \mathrm{up}(x_0^{(i+1)}) + \sigma_n \epsilon, \\
    \rho &= \frac{\sigma - \sigma_c}{\sigma_n - \sigma_c}, \qquad
    x = (1 - \rho) y_c + \rho y_n, \qquad
    \frac{dx}{d\sigma} = \frac{y_n - y_c}{\sigma_n - \sigma_c}.

The coarsest stage has :math:`\sigma_n = 1`, so :math:`y_n = \epsilon` with no special case.
Per-stage clean signals come from :func:`clean_pyramid_latent` (Definition 1) or
:func:`clean_pyramid_pixel` (Definition 2).

:class:`StageProcess` is one stage of it as a value (window, per-frame gain, projection :math:`P`
of the transition below): sampling, target, the :math:`x_0` decode, the closed-form noise and the
model conditioning of theory §3 (:func:`natural_input`, :func:`model_velocity`), on which the
samplers, the trainer's loss and DMD are built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .natural import bridge_velocity, per_frame, scale_c, varsigma
from .resample import Pyramid, batch_scalar
from .windows import StageWindows

Model = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
"""The model contract ``model(x / c, 1000 * varsigma, cond) -> v_hat`` (see :mod:`pyrflow_ref.samplers`)."""


# twin: pyrflow_fast.process.rho
def rho(sigma, sigma_c: float, sigma_n: float):
    r"""Local level :math:`(\sigma - \sigma_c) / (\sigma_n - \sigma_c)` inside a window."""
    return (np.asarray(sigma, dtype=np.float64) - sigma_c) / (sigma_n - sigma_c)


def y_c(x0: np.ndarray, eps: np.ndarray, sigma_c: float) -> np.ndarray:
    """Cleaner end of the stage: all of the stage's detail, noise level ``sigma_c``."""
    return (1 - sigma_c) * x0 + sigma_c * eps


def y_n(x0_up: np.ndarray, eps: np.ndarray, sigma_n: float) -> np.ndarray:
    """Noisier end: only the next coarser stage's signal ``up(x0^(i+1))``, noise level ``sigma_n``."""
    return (1 - sigma_n) * x0_up + sigma_n * eps


# twin: pyrflow_fast.process.pyramidal_x
def pyramidal_x(yc: np.ndarray, yn: np.ndarray, rho_) -> np.ndarray:
    """The stage sample ``(1 - rho) y_c + rho y_n`` (``rho`` scalar or per-sample ``(B,)``)."""
    r = batch_scalar(rho_, yc.ndim)
    return (1 - r) * yc + r * yn


def target(yc: np.ndarray, yn: np.ndarray, sigma_c: float, sigma_n: float) -> np.ndarray:
    r"""Regression target :math:`dx/d\sigma = (y_n - y_c)/(\sigma_n - \sigma_c)`."""
    return (yn - yc) / (sigma_n - sigma_c)


# twin: pyrflow_fast.process.coarse_signal_up
def coarse_signal_up(x0s: Sequence[np.ndarray], stage: int, pyramid: Pyramid) -> np.ndarray:
    """``up(x0^(stage+1))`` at the stage's shape; zeros at the coarsest stage (its ``y_n`` is pure noise)."""
    if stage + 1 >= len(x0s):
        return np.zeros_like(x0s[stage])
    return pyramid.transitions[stage].up(x0s[stage + 1], np.shape(x0s[stage]))


# twin: pyrflow_fast.process.forward_sample
def forward_sample(
    x0s: Sequence[np.ndarray],
    eps: np.ndarray,
    sigma,
    stage: int,
    windows: StageWindows,
    pyramid: Pyramid,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy stage sample and its target.

    :param x0s: clean signal of every stage, finest first (orthonormal units).
    :param eps: white noise at the shape of stage ``stage``.
    :param sigma: global noise level(s) inside the stage's window, scalar or ``(B,)``.
    :returns: ``(x, dx/dsigma)``.
    """
    sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
    s = np.asarray(sigma, dtype=np.float64)
    if np.any(s < sc) or np.any(s > sn):
        raise ValueError(f"sigma {sigma!r} is outside stage {stage}'s window [{sc}, {sn}]")
    process = StageProcess.pyramidal(pyramid, windows, stage, np.shape(x0s[stage])[-3])
    return process.forward(x0s[stage], eps, sigma, coarse_signal_up(x0s, stage, pyramid))


# twin: pyrflow_fast.process.clean_pyramid_latent
def clean_pyramid_latent(x0: np.ndarray, pyramid: Pyramid) -> list[np.ndarray]:
    """Definition 1: :math:`x_0^{(i+1)} = \\mathrm{down}(x_0^{(i)})`, finest first."""
    out = [np.asarray(x0)]
    for transition in pyramid.transitions:
        out.append(transition.down(out[-1]))
    return out


# twin: pyrflow_fast.process.clean_pyramid_pixel
def clean_pyramid_pixel(
    video: np.ndarray,
    pyramid: Pyramid,
    encode: Callable[[np.ndarray], np.ndarray],
    pixel_pyramid: Pyramid,
) -> list[np.ndarray]:
    r"""Definition 2: downsample the pixel video, encode each stage, apply the gain :math:`g_i`.

    :param video: ``(B, C_pix, F_pix, H_pix, W_pix)``.
    :param pyramid: the latent pyramid (it supplies the per-frame gains to orthonormal units).
    :param encode: the encoder (the VAE; a linear map in the reference), natural scale out.
    :param pixel_pyramid: the pixel-space downsamplers (e.g. ``avgpool`` with the first-frame rule,
        mean pooling being the anti-aliasing box filter).
    """
    if pixel_pyramid.num_stages != pyramid.num_stages:
        raise ValueError(f"pixel pyramid has {pixel_pyramid.num_stages} stages, latent pyramid {pyramid.num_stages}")
    videos = [np.asarray(video)]
    for transition in pixel_pyramid.transitions:
        videos.append(transition.down(videos[-1]))
    out = []
    for i, v in enumerate(videos):
        z = encode(v)
        out.append(z * pyramid.gain(i, z.shape[-3])[:, None, None])
    for i, (z, expected) in enumerate(zip(out, pyramid.shapes(out[0].shape))):
        if z.shape != expected:
            raise ValueError(f"encoded stage {i} has shape {z.shape}, the latent pyramid expects {expected}")
    return out


# twin: pyrflow_fast.process.x0_from_velocity
def x0_from_velocity(
    x: np.ndarray,
    v: np.ndarray,
    sigma,
    sigma_c: float,
    sigma_n: float,
    project: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    r"""Clean stage signal from the stage sample and its velocity (Definition 1).

    .. math::

        x - \sigma \frac{dx}{d\sigma} = P x_0 + k (I - P) x_0, \qquad
        k = \frac{(1 - \sigma_c)\sigma_n}{\sigma_n - \sigma_c},

    independent of :math:`\sigma` inside the stage. ``project`` is :math:`P` of the transition below
    the stage; it is not needed when :math:`k = 1` (finest and coarsest stages).
    """
    d = x - batch_scalar(sigma, x.ndim) * v
    k = (1 - sigma_c) * sigma_n / (sigma_n - sigma_c)
    if np.isclose(k, 1.0, rtol=0, atol=1e-15):
        return d
    if project is None:
        raise ValueError(f"a stage with window [{sigma_c}, {sigma_n}] needs the projection P to decode x0")
    pd = project(d)
    return pd + (d - pd) / k


# twin: pyrflow_fast.process.timesteps
def timesteps(sigma, g: np.ndarray, batch: int) -> np.ndarray:
    r"""Per-frame model timesteps :math:`1000\,\varsigma(\sigma, g)`, shape ``(B, F)``."""
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(-1, 1), (batch, 1))
    return 1000.0 * varsigma(s, np.asarray(g, dtype=np.float64)[None, :])


# twin: pyrflow_fast.process.natural_input
def natural_input(x: np.ndarray, sigma, g) -> tuple[np.ndarray, np.ndarray]:
    r"""What the model sees of a stage sample ``x`` ``(B, C, F, H, W)``: :math:`(x / c, 1000\,\varsigma)`.

    ``t`` is per frame, ``(B, F)``.
    """
    s, gg = per_frame(sigma, g, x.ndim)
    return x / scale_c(s, gg), timesteps(sigma, g, x.shape[0])


# twin: pyrflow_fast.process.model_velocity
def model_velocity(model: Model, x: np.ndarray, sigma, g: np.ndarray, cond: Any = None) -> np.ndarray:
    r""":math:`dx/d\sigma` of a stage sample ``x`` at global level ``sigma`` with per-frame gain ``g`` (theory §3)."""
    s, gg = per_frame(sigma, g, x.ndim)
    v_hat = model(*natural_input(x, sigma, g), cond)
    return bridge_velocity(x, s, gg, v_hat)


# twin: pyrflow_fast.process.StageProcess
@dataclass(frozen=True)
class StageProcess:
    r"""The forward process of one stage (theory §2), linear in :math:`x_0`.

    With :math:`\rho = (\sigma - \sigma_c)/(\sigma_n - \sigma_c)` and, under Definition 1,
    :math:`\mathrm{up}(x_0^{(i+1)}) = P x_0`:

    .. math::

        x = M x_0 + \sigma \epsilon, \qquad
        M = (1 - \sigma) P + (1 - \rho)(1 - \sigma_c)(I - P), \qquad
        M^\top M = (1 - \sigma)^2 P + \big((1 - \rho)(1 - \sigma_c)\big)^2 (I - P).

    The plain process :math:`x = (1 - \sigma) x_0 + \sigma \epsilon` is the window
    :math:`[0, 1]`, where :math:`M = (1 - \sigma) I` and no :math:`P` is needed. Arrays are
    ``(B, C, F, H, W)`` at the stage's resolution; ``sigma`` is a number or per sample ``(B,)``.

    :param sigma_c: cleaner end of the window.
    :param sigma_n: noisier end (1 for the plain process and the coarsest stage).
    :param gain: the stage's per-frame gain :math:`g_i` ``(F,)`` or a number (what the model
        conditioning divides by, theory §3).
    :param project: :math:`P` of the transition below the stage; required when ``sigma_n < 1``.
    """

    sigma_c: float
    sigma_n: float
    gain: Any = 1.0
    project: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma_c < self.sigma_n <= 1.0:
            raise ValueError(f"need 0 <= sigma_c < sigma_n <= 1, got [{self.sigma_c}, {self.sigma_n}]")
        if self.sigma_n < 1.0 and self.project is None:
            raise ValueError(f"a window [{self.sigma_c}, {self.sigma_n}] with sigma_n < 1 needs the projection P")

    @classmethod
    def plain(cls, gain: Any = 1.0) -> StageProcess:
        r"""The plain process :math:`x = (1 - \sigma) x_0 + \sigma \epsilon` (window [0, 1])."""
        return cls(0.0, 1.0, gain, None)

    @classmethod
    def pyramidal(cls, pyramid: Pyramid, windows: StageWindows, stage: int, frames: int) -> StageProcess:
        r"""The pyramidal process of ``stage`` (``frames``: the stage's latent frame count, for the gain).

        ``windows`` may be a schedule's effective windows: :math:`P` is taken only where
        :math:`\sigma_n < 1` needs it.
        """
        sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
        project = pyramid.transitions[stage].project if sn < 1.0 else None
        return cls(sc, sn, pyramid.gain(stage, frames), project)

    # ----------------------------------------------------------------------- the process
    def rho(self, sigma):
        """Local level inside the window."""
        return rho(sigma, self.sigma_c, self.sigma_n)

    def sigma(self, rho_):
        r"""Global level :math:`\sigma_c + \rho (\sigma_n - \sigma_c)` of local level(s) ``rho_`` (see :meth:`rho`)."""
        return self.sigma_c + np.asarray(rho_, dtype=np.float64) * (self.sigma_n - self.sigma_c)

    def ends(self, x0: np.ndarray, eps: np.ndarray, coarse: np.ndarray | None = None):
        """``(y_c, y_n)``; ``coarse`` is ``up(x0^(i+1))`` (default :math:`P x_0`, Definition 1)."""
        if coarse is None:
            coarse = self.project(x0) if self.project is not None else np.zeros_like(x0)
        return y_c(x0, eps, self.sigma_c), y_n(coarse, eps, self.sigma_n)

    def sample(self, x0: np.ndarray, eps: np.ndarray, sigma, coarse: np.ndarray | None = None) -> np.ndarray:
        r"""The stage sample :math:`(1 - \rho) y_c + \rho y_n` (:math:`= M x_0 + \sigma\epsilon` under Definition 1)."""
        return pyramidal_x(*self.ends(x0, eps, coarse), self.rho(sigma))

    def target(self, x0: np.ndarray, eps: np.ndarray, coarse: np.ndarray | None = None) -> np.ndarray:
        r"""Regression target :math:`dx/d\sigma = (y_n - y_c)/(\sigma_n - \sigma_c)` (independent of :math:`\sigma`)."""
        return target(*self.ends(x0, eps, coarse), self.sigma_c, self.sigma_n)

    def forward(self, x0: np.ndarray, eps: np.ndarray, sigma, coarse: np.ndarray | None = None):
        """``(sample, target)`` from one evaluation of the two ends."""
        yc, yn = self.ends(x0, eps, coarse)
        return pyramidal_x(yc, yn, self.rho(sigma)), target(yc, yn, self.sigma_c, self.sigma_n)

    def x0_from_velocity(self, x: np.ndarray, v: np.ndarray, sigma) -> np.ndarray:
        r"""Clean prediction from the velocity :math:`dx/d\sigma` (:func:`x0_from_velocity`)."""
        return x0_from_velocity(x, v, sigma, self.sigma_c, self.sigma_n, self.project)

    def eps(self, x: np.ndarray, x0: np.ndarray, sigma) -> np.ndarray:
        r"""Closed-form noise :math:`\epsilon = (x - M x_0)/\sigma` (Definition 1; uses :math:`P^2 = P`)."""
        return (x - self.apply_m(x0, sigma)) / batch_scalar(sigma, x.ndim)

    # ------------------------------------------------------------------ M and its bands
    def _bands(self, x: np.ndarray, low, high) -> np.ndarray:
        """``low P x + high (I - P) x`` (``low``, ``high`` scalar or ``(B,)``)."""
        lo, hi = batch_scalar(low, x.ndim), batch_scalar(high, x.ndim)
        if self.project is None:  # sigma_n = 1: both coefficients agree, M = (1 - sigma) I
            return lo * x
        px = self.project(x)
        return lo * px + hi * (x - px)

    def band_weights(self, sigma):
        r"""Band weights of :math:`M^\top M`: :math:`((1 - \sigma)^2, ((1 - \rho)(1 - \sigma_c))^2)`."""
        s = np.asarray(sigma, dtype=np.float64)
        return (1 - s) ** 2, ((1 - self.rho(s)) * (1 - self.sigma_c)) ** 2

    def apply_m(self, x0: np.ndarray, sigma) -> np.ndarray:
        r""":math:`M x_0 = (1 - \sigma) P x_0 + (1 - \rho)(1 - \sigma_c)(I - P) x_0`."""
        s = np.asarray(sigma, dtype=np.float64)
        return self._bands(x0, 1 - s, (1 - self.rho(s)) * (1 - self.sigma_c))

    def apply_mtm(self, d: np.ndarray, sigma, band_norm: str = "none") -> np.ndarray:
        r""":math:`M^\top M d` by band weights; ``band_norm="low"`` divides both by :math:`(1-\sigma)^2`."""
        low, high = self.band_weights(sigma)
        if band_norm == "low":
            low, high = np.ones_like(low), high / low
        elif band_norm != "none":
            raise ValueError(f"band_norm must be 'low' or 'none', got {band_norm!r}")
        return self._bands(d, low, high)

    # --------------------------------------------------------------- model conditioning
    def frame_gain(self, frames: int) -> np.ndarray:
        """The gain as a per-frame ``(F,)`` array (a number is used for every frame)."""
        g = np.asarray(self.gain, dtype=np.float64)
        return np.broadcast_to(g, (frames,)) if g.ndim == 0 else g

    def natural_input(self, x: np.ndarray, sigma) -> tuple[np.ndarray, np.ndarray]:
        r"""What a natural-scale backbone sees of ``x``: :math:`(x / c, 1000\,\varsigma)` (:func:`natural_input`)."""
        return natural_input(x, sigma, self.frame_gain(x.shape[-3]))

    def velocity(self, model: Model, x: np.ndarray, sigma, cond: Any = None) -> np.ndarray:
        r""":math:`dx/d\sigma` of a natural-scale backbone at the stage's gain (:func:`model_velocity`)."""
        return model_velocity(model, x, sigma, self.frame_gain(x.shape[-3]), cond)

    def denoise(self, model: Model, x: np.ndarray, sigma, cond: Any = None) -> np.ndarray:
        """The model's clean prediction at ``(x, sigma)``."""
        return self.x0_from_velocity(x, self.velocity(model, x, sigma, cond), sigma)
