r"""Torch twin of :mod:`pyrflow_ref.process`: the pyramidal forward process in orthonormal units.

:func:`y_c`, :func:`y_n` and :func:`target` are plain arithmetic and re-exported from the
reference; the functions that build tensors or resample have torch bodies with the reference's
names, arguments and errors. :class:`StageProcess` is the twin of
:class:`pyrflow_ref.process.StageProcess`; its per-frame gain and the model conditioning compute in
at least float32 on the sample's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pyrflow_ref.process import target, y_c, y_n
from pyrflow_ref.windows import StageWindows

from .contract import Denoiser
from .kernels.torch_ops import compute_dtype
from .natural import bridge_velocity, per_frame, scale_c, varsigma
from .resample import Pyramid, batch_scalar

__all__ = [
    "StageProcess",
    "clean_pyramid_latent",
    "clean_pyramid_pixel",
    "coarse_signal_up",
    "forward_sample",
    "model_velocity",
    "natural_input",
    "pyramidal_x",
    "rho",
    "target",
    "timesteps",
    "x0_from_velocity",
    "y_c",
    "y_n",
]


# twin: pyrflow_ref.process.rho
def rho(sigma, sigma_c: float, sigma_n: float) -> torch.Tensor:
    r"""Local level :math:`(\sigma - \sigma_c) / (\sigma_n - \sigma_c)` inside a window (float64 for host values).

    >>> rho([0.5, 0.75], 0.5, 1.0).tolist()
    [0.0, 0.5]
    """
    s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
    return (s - sigma_c) / (sigma_n - sigma_c)


# twin: pyrflow_ref.process.pyramidal_x
def pyramidal_x(yc: torch.Tensor, yn: torch.Tensor, rho_) -> torch.Tensor:
    """The stage sample ``(1 - rho) y_c + rho y_n`` (``rho`` scalar or per-sample ``(B,)``)."""
    r = batch_scalar(rho_, yc.ndim, yc.dtype, yc.device)
    return (1 - r) * yc + r * yn


# twin: pyrflow_ref.process.coarse_signal_up
def coarse_signal_up(x0s: Sequence[torch.Tensor], stage: int, pyramid: Pyramid) -> torch.Tensor:
    """``up(x0^(stage+1))`` at the stage's shape; zeros at the coarsest stage (its ``y_n`` is pure noise)."""
    if stage + 1 >= len(x0s):
        return torch.zeros_like(x0s[stage])
    return pyramid.transitions[stage].up(x0s[stage + 1], tuple(x0s[stage].shape))


# twin: pyrflow_ref.process.forward_sample
def forward_sample(
    x0s: Sequence[torch.Tensor],
    eps: torch.Tensor,
    sigma,
    stage: int,
    windows: StageWindows,
    pyramid: Pyramid,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy stage sample and its target ``(x, dx/dsigma)``; see :func:`pyrflow_ref.process.forward_sample`."""
    sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
    s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
    if bool((s < sc).any()) or bool((s > sn).any()):
        raise ValueError(f"sigma {sigma!r} is outside stage {stage}'s window [{sc}, {sn}]")
    process = StageProcess.pyramidal(pyramid, windows, stage, x0s[stage].shape[-3])
    return process.forward(x0s[stage], eps, s, coarse_signal_up(x0s, stage, pyramid))


# twin: pyrflow_ref.process.clean_pyramid_latent
def clean_pyramid_latent(x0: torch.Tensor, pyramid: Pyramid) -> list[torch.Tensor]:
    """Definition 1: :math:`x_0^{(i+1)} = \\mathrm{down}(x_0^{(i)})`, finest first."""
    out = [torch.as_tensor(x0)]
    for transition in pyramid.transitions:
        out.append(transition.down(out[-1]))
    return out


# twin: pyrflow_ref.process.clean_pyramid_pixel
def clean_pyramid_pixel(
    video: torch.Tensor,
    pyramid: Pyramid,
    encode: Callable[[torch.Tensor], torch.Tensor],
    pixel_pyramid: Pyramid,
) -> list[torch.Tensor]:
    r"""Definition 2: downsample the pixel video, encode each stage, apply the gain :math:`g_i`.

    See :func:`pyrflow_ref.process.clean_pyramid_pixel`; ``encode`` maps tensors to tensors.
    """
    if pixel_pyramid.num_stages != pyramid.num_stages:
        raise ValueError(f"pixel pyramid has {pixel_pyramid.num_stages} stages, latent pyramid {pyramid.num_stages}")
    videos = [torch.as_tensor(video)]
    for transition in pixel_pyramid.transitions:
        videos.append(transition.down(videos[-1]))
    out = []
    for i, v in enumerate(videos):
        z = encode(v)
        g = torch.as_tensor(pyramid.gain(i, z.shape[-3]), dtype=z.dtype, device=z.device)
        out.append(z * g[:, None, None])
    for i, (z, expected) in enumerate(zip(out, pyramid.shapes(tuple(out[0].shape)))):
        if tuple(z.shape) != expected:
            raise ValueError(f"encoded stage {i} has shape {tuple(z.shape)}, the latent pyramid expects {expected}")
    return out


# twin: pyrflow_ref.process.x0_from_velocity
def x0_from_velocity(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_c: float,
    sigma_n: float,
    project: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    r"""Clean stage signal from the stage sample and its velocity (Definition 1).

    :math:`x - \sigma\, dx/d\sigma = P x_0 + k (I - P) x_0` with
    :math:`k = (1 - \sigma_c)\sigma_n / (\sigma_n - \sigma_c)`; see
    :func:`pyrflow_ref.process.x0_from_velocity`.
    """
    d = x - batch_scalar(sigma, x.ndim, x.dtype, x.device) * v
    k = (1 - sigma_c) * sigma_n / (sigma_n - sigma_c)
    if abs(k - 1.0) <= 1e-15:
        return d
    if project is None:
        raise ValueError(f"a stage with window [{sigma_c}, {sigma_n}] needs the projection P to decode x0")
    pd = project(d)
    return pd + (d - pd) / k


# twin: pyrflow_ref.process.timesteps
def timesteps(sigma, g, batch: int) -> torch.Tensor:
    r"""Per-frame model timesteps :math:`1000\,\varsigma(\sigma, g)`, shape ``(B, F)``, on ``g``'s device and dtype.

    Computed in float64 and rounded once, as the trainer's loss does: a float32 ``t`` near 1000
    is only good to :math:`6 \cdot 10^{-5}`, which the sinusoidal time embedding does not smooth.

    >>> timesteps(0.5, torch.tensor([1.0, 2.0], dtype=torch.float64), 2).tolist()  # gain 2: varsigma = 1/3
    [[500.0, 333.3333333333333], [500.0, 333.3333333333333]]
    """
    g = torch.as_tensor(g, dtype=None if torch.is_tensor(g) else torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=g.device).reshape(-1, 1).expand(batch, 1)
    return (1000.0 * varsigma(s, g.to(torch.float64)[None, :])).to(g.dtype)


def _gain(g, x: torch.Tensor) -> torch.Tensor:
    """A per-frame gain as a tensor on ``x``'s device, in at least float32 (what the fused ops use)."""
    return torch.as_tensor(g, dtype=compute_dtype(x.dtype), device=x.device)


# twin: pyrflow_ref.process.natural_input
def natural_input(x: torch.Tensor, sigma, g) -> tuple[torch.Tensor, torch.Tensor]:
    r"""What the model sees of a stage sample ``x`` ``(B, C, F, H, W)``: :math:`(x / c, 1000\,\varsigma)`.

    ``t`` is per frame, ``(B, F)``.
    """
    g = _gain(g, x)
    s, gg = per_frame(sigma, g, x.ndim)
    return x / scale_c(s, gg), timesteps(sigma, g, x.shape[0])


# twin: pyrflow_ref.process.model_velocity
def model_velocity(model: Denoiser, x: torch.Tensor, sigma, g, cond: Any = None) -> torch.Tensor:
    r""":math:`dx/d\sigma` of a stage sample ``x`` at global level ``sigma`` with per-frame gain ``g`` (theory §3)."""
    g = _gain(g, x)
    v_hat = model(*natural_input(x, sigma, g), cond)
    return bridge_velocity(x, *per_frame(sigma, g, x.ndim), v_hat)


def _sigma(sigma) -> torch.Tensor:
    """A host number as a float64 tensor; a tensor as it is."""
    return torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)


# twin: pyrflow_ref.process.StageProcess
@dataclass(frozen=True)
class StageProcess:
    r"""Torch twin of :class:`pyrflow_ref.process.StageProcess`: the forward process of one stage.

    .. math::

        x = M x_0 + \sigma \epsilon, \qquad M = (1 - \sigma) P + (1 - \rho)(1 - \sigma_c)(I - P).

    Tensors are ``(B, C, F, H, W)`` at the stage's resolution; ``sigma`` is a number or per
    sample ``(B,)``.

    :param sigma_c: cleaner end of the window.
    :param sigma_n: noisier end (1 for the plain process and the coarsest stage).
    :param gain: the stage's per-frame gain :math:`g_i` ``(F,)`` or a number.
    :param project: :math:`P` of the transition below the stage; required when ``sigma_n < 1``.
    """

    sigma_c: float
    sigma_n: float
    gain: Any = 1.0
    project: Callable[[torch.Tensor], torch.Tensor] | None = None

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
        """The pyramidal process of ``stage``; see :meth:`pyrflow_ref.process.StageProcess.pyramidal`."""
        sc, sn = windows.sigma_c(stage), windows.sigma_n(stage)
        project = pyramid.transitions[stage].project if sn < 1.0 else None
        return cls(sc, sn, pyramid.gain(stage, frames), project)

    # ----------------------------------------------------------------------- the process
    def rho(self, sigma) -> torch.Tensor:
        """Local level inside the window."""
        return rho(sigma, self.sigma_c, self.sigma_n)

    def sigma(self, rho_) -> torch.Tensor:
        r"""Global level :math:`\sigma_c + \rho (\sigma_n - \sigma_c)` of local level(s) ``rho_`` (see :meth:`rho`)."""
        return self.sigma_c + _sigma(rho_) * (self.sigma_n - self.sigma_c)

    def ends(self, x0: torch.Tensor, eps: torch.Tensor, coarse: torch.Tensor | None = None):
        """``(y_c, y_n)``; ``coarse`` is ``up(x0^(i+1))`` (default :math:`P x_0`, Definition 1)."""
        if coarse is None:
            coarse = self.project(x0) if self.project is not None else torch.zeros_like(x0)
        return y_c(x0, eps, self.sigma_c), y_n(coarse, eps, self.sigma_n)

    def sample(self, x0: torch.Tensor, eps: torch.Tensor, sigma, coarse: torch.Tensor | None = None) -> torch.Tensor:
        r"""The stage sample :math:`(1 - \rho) y_c + \rho y_n` (:math:`= M x_0 + \sigma\epsilon` under Definition 1)."""
        return pyramidal_x(*self.ends(x0, eps, coarse), self.rho(sigma))

    def target(self, x0: torch.Tensor, eps: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        r"""Regression target :math:`dx/d\sigma = (y_n - y_c)/(\sigma_n - \sigma_c)`."""
        return target(*self.ends(x0, eps, coarse), self.sigma_c, self.sigma_n)

    def forward(self, x0: torch.Tensor, eps: torch.Tensor, sigma, coarse: torch.Tensor | None = None):
        """``(sample, target)`` from one evaluation of the two ends."""
        yc, yn = self.ends(x0, eps, coarse)
        return pyramidal_x(yc, yn, self.rho(sigma)), target(yc, yn, self.sigma_c, self.sigma_n)

    def x0_from_velocity(self, x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
        r"""Clean prediction from the velocity :math:`dx/d\sigma` (:func:`x0_from_velocity`)."""
        return x0_from_velocity(x, v, sigma, self.sigma_c, self.sigma_n, self.project)

    def eps(self, x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
        r"""Closed-form noise :math:`\epsilon = (x - M x_0)/\sigma` (Definition 1; uses :math:`P^2 = P`)."""
        return (x - self.apply_m(x0, sigma)) / batch_scalar(sigma, x.ndim, x.dtype, x.device)

    # ------------------------------------------------------------------ M and its bands
    def _bands(self, x: torch.Tensor, low, high) -> torch.Tensor:
        """``low P x + high (I - P) x`` (``low``, ``high`` scalar or ``(B,)``)."""
        lo = batch_scalar(low, x.ndim, x.dtype, x.device)
        hi = batch_scalar(high, x.ndim, x.dtype, x.device)
        if self.project is None:  # sigma_n = 1: both coefficients agree, M = (1 - sigma) I
            return lo * x
        px = self.project(x)
        return lo * px + hi * (x - px)

    def band_weights(self, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Band weights of :math:`M^\top M`: :math:`((1 - \sigma)^2, ((1 - \rho)(1 - \sigma_c))^2)`."""
        s = _sigma(sigma)
        return (1 - s) ** 2, ((1 - self.rho(s)) * (1 - self.sigma_c)) ** 2

    def apply_m(self, x0: torch.Tensor, sigma) -> torch.Tensor:
        r""":math:`M x_0 = (1 - \sigma) P x_0 + (1 - \rho)(1 - \sigma_c)(I - P) x_0`."""
        s = _sigma(sigma)
        return self._bands(x0, 1 - s, (1 - self.rho(s)) * (1 - self.sigma_c))

    def apply_mtm(self, d: torch.Tensor, sigma, band_norm: str = "none") -> torch.Tensor:
        r""":math:`M^\top M d` by band weights; ``band_norm="low"`` divides both by :math:`(1-\sigma)^2`."""
        low, high = self.band_weights(sigma)
        if band_norm == "low":
            low, high = torch.ones_like(low), high / low
        elif band_norm != "none":
            raise ValueError(f"band_norm must be 'low' or 'none', got {band_norm!r}")
        return self._bands(d, low, high)

    # --------------------------------------------------------------- model conditioning
    def frame_gain(self, frames: int) -> torch.Tensor:
        """The gain as a per-frame ``(F,)`` tensor (a number is used for every frame; float64 for host values)."""
        g = torch.as_tensor(self.gain, dtype=None if torch.is_tensor(self.gain) else torch.float64)
        return g.expand(frames) if g.ndim == 0 else g

    def natural_input(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        r"""What a natural-scale backbone sees of ``x``: :math:`(x / c, 1000\,\varsigma)` (:func:`natural_input`)."""
        return natural_input(x, sigma, self.frame_gain(x.shape[-3]))

    def velocity(self, model: Denoiser, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        r""":math:`dx/d\sigma` of a natural-scale backbone at the stage's gain (:func:`model_velocity`)."""
        return model_velocity(model, x, sigma, self.frame_gain(x.shape[-3]), cond)

    def denoise(self, model: Denoiser, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        """The model's clean prediction at ``(x, sigma)``."""
        return self.x0_from_velocity(x, self.velocity(model, x, sigma, cond), sigma)
