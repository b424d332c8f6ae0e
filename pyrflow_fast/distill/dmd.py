r"""Distribution matching distillation (DMD) in flow-matching form, for plain and pyramidal stages.

Three roles (theory §4): the **generator** (student) produces the clean signal
:math:`\hat x_0` of a stage; the **real score** (frozen teacher, with classifier-free guidance)
and the **fake score** (critic, trained online by flow matching on generator samples) both
denoise a re-noised generator sample. Every model here is a natural-scale backbone with the
samplers' contract ``model(x / c, 1000 * varsigma, cond) -> v_hat``
(:mod:`pyrflow_fast.samplers`), evaluated through :func:`pyrflow_fast.samplers.model_velocity`.

Re-noising (:class:`StageProcess`)
----------------------------------
Inside a stage with window :math:`[\sigma_c, \sigma_n]`, local level
:math:`\rho = (\sigma - \sigma_c)/(\sigma_n - \sigma_c)` and the projection :math:`P` onto the
low band of the level below (Definition 1, :math:`\mathrm{up}(x_0^{(i+1)}) = P x_0`), the
pyramidal forward process is linear in :math:`x_0`:

.. math::

    x = M x_0 + \sigma \epsilon, \qquad
    M = (1 - \sigma) P + (1 - \rho)(1 - \sigma_c)(I - P),

so the noise is recoverable in closed form, :math:`\epsilon = (x - M x_0)/\sigma` (proved in
``proofs/pt_dmd.py`` from :math:`P^\top = P`, :math:`P^2 = P`). The plain process
:math:`x = (1 - \sigma) x_0 + \sigma\epsilon` is the window :math:`[0, 1]`, where
:math:`M = (1 - \sigma) I` and no :math:`P` is needed. Clean predictions are decoded by
:func:`pyrflow_fast.process.x0_from_velocity` (plain: :math:`x - \sigma v`).

Variants (:class:`DMDVariant`)
------------------------------
- ``ot``: original teacher. The stage's clean prediction (orthonormal units, per-frame gain
  :math:`g_i`) is re-noised with the **plain** process at the stage's resolution; through the
  natural-scale contract the teacher sees :math:`x / c = (1 - \varsigma) a_0 + \varsigma\epsilon`
  with :math:`a_0 = \hat x_0 / g_i`, i.e. Wan's own process on the natural latent, at
  :math:`t = 1000\,\varsigma(\sigma, g_i)` per frame. Score levels cover :math:`[0, 1]`.
- ``pt``: pyramidal teacher, pyramidal process inside the stage window (score levels drawn in the
  window). Back-propagating the score difference through :math:`x = M\hat x_0 + \sigma\epsilon`
  (Tweedie: :math:`\nabla\log p(x) = -(x - M\,\mathbb E[x_0 | x])/\sigma^2`) gives
  :math:`M^\top M (x_0^{fake} - x_0^{real})/\sigma^2`, with
  :math:`M^\top M = (1 - \sigma)^2 P + ((1 - \rho)(1 - \sigma_c))^2 (I - P)`: band weights.
- ``pt*``: the same process and teacher without the band re-weighting (plain DMD weights; the
  paper's most visually pleasing recipe).

Generator update
----------------
Score levels :math:`\sigma` are drawn per sample uniformly in the unshifted variable over the
window, shifted by :math:`s' = k s/(1 + (k-1) s)` and clamped to :math:`[0.02, 0.98]`
(:func:`score_sigmas`). With :math:`x = M \hat x_0 + \sigma \epsilon` (no gradient),

.. math::

    x_0^{real} &= \mathrm{dec}\big(u + w (c - u)\big), \quad x_0^{fake} = \mathrm{dec}(v_{fake}), \\
    \mathrm{grad} &= \frac{W (x_0^{fake} - x_0^{real})}
                         {\operatorname{mean}_{C,F,H,W} |\hat x_0 - x_0^{real}|}
                    \quad\text{(per sample)}, \\
    L_{gen} &= \tfrac12 \operatorname{mean}\big(\hat x_0 - \mathrm{sg}(\hat x_0 - \mathrm{grad})\big)^2
             + \lambda_{reg} \operatorname{mean}(\hat x_0 - x_0^{teacher})^2,

where :math:`u, c` are the teacher's unconditional and conditional natural velocities (CFG in
the standard form; the bridge to :math:`dx/d\sigma` and the decoding are affine with
condition-free offsets, so guiding :math:`\hat v` guides :math:`x_0^{real}` identically).
:math:`W = I` for ``ot`` and ``pt*``; for ``pt``, :math:`W = M^\top M` divided by the common
factor :math:`(1-\sigma)^2` (``band_norm="low"``, the default: exactly the scalar plain DMD drops,
so ``pt`` equals plain DMD wherever :math:`M \propto I`, e.g. at the coarsest stage) or the raw
:math:`M^\top M` (``band_norm="none"``). The mean in :math:`L_{gen}` is over **all elements**
(batch included), so :math:`\partial L_{gen}/\partial \hat x_0 = \mathrm{grad} / N` with
:math:`N` the element count (CausVid's ``0.5 * mse_loss(..., reduction="mean")``).

Critic update: :math:`L_{fake} = \operatorname{mean}\|dx/d\sigma_{fake}(x) - dx/d\sigma\|^2` on a
re-noised, detached generator sample, with the target of the same forward process
(:math:`\epsilon - \hat x_0` for the plain one), in float32, as the pyramidal trainer's loss.
The critic is updated ``critic_ratio`` (5) times per generator update.

>>> DMDVariant.parse("PT*"), DMDVariant.parse("ot").value
(<DMDVariant.PT_STAR: 'pt*'>, 'ot')
>>> s = score_sigmas(1000, shift=5.0, generator=torch.Generator().manual_seed(0))
>>> bool(s.min() >= 0.02 and s.max() <= 0.98), s.dtype
(True, torch.float64)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pyrflow_ref.windows import StageWindows, shift_sigma, unshift_sigma

from ..natural import per_frame, scale_c
from ..process import pyramidal_x, rho, x0_from_velocity, y_c, y_n
from ..resample import Pyramid, batch_scalar
from ..samplers import Model, cfg, model_velocity, timesteps

__all__ = [
    "DMD",
    "DMDConfig",
    "DMDLoss",
    "DMDVariant",
    "StageProcess",
    "cfg_combine",
    "critic_loss",
    "dmd_gradient",
    "generator_loss",
    "regression_loss",
    "score_sigmas",
]

Projection = Callable[[torch.Tensor], torch.Tensor]


class DMDVariant(str, enum.Enum):
    """DMD variants: ``ot`` (original teacher), ``pt`` (pyramidal teacher), ``pt*`` (PT without band weights)."""

    OT = "ot"
    PT = "pt"
    PT_STAR = "pt*"

    @classmethod
    def parse(cls, name: DMDVariant | str) -> DMDVariant:
        """The variant named ``name`` (case-insensitive; ``pt_star`` and ``ptstar`` alias ``pt*``).

        >>> DMDVariant.parse("pt_star") is DMDVariant.PT_STAR
        True
        """
        if isinstance(name, DMDVariant):
            return name
        key = str(name).strip().lower()
        key = {"pt_star": "pt*", "ptstar": "pt*", "pt-star": "pt*"}.get(key, key)
        for v in cls:
            if v.value == key:
                return v
        raise ValueError(f"unknown DMD variant {name!r}; expected one of 'ot', 'pt', 'pt*'")

    @property
    def pyramidal(self) -> bool:
        """Whether the variant re-noises with the pyramidal process (PT, PT*)."""
        return self is not DMDVariant.OT


@dataclass(frozen=True)
class DMDConfig:
    """Hyper-parameters of DMD.

    :param variant: ``"ot"``, ``"pt"`` or ``"pt*"`` (default ``"pt*"``, the paper's final recipe).
    :param guidance: teacher CFG scale ``w`` in the standard form ``u + w (c - u)`` (4.5: CausVid's
        and FastVideo's value for Wan 1.3B written in this form; 1 disables guidance).
    :param shift: shift ``k`` of the score levels (Wan's 5).
    :param sigma_min: lower clamp of the score levels.
    :param sigma_max: upper clamp of the score levels.
    :param critic_ratio: critic updates per generator update (5).
    :param regression_weight: weight of the optional teacher-regression term (0.01).
    :param band_norm: ``"low"`` (PT band weights divided by :math:`(1-\\sigma)^2`) or ``"none"``
        (raw :math:`M^\\top M`); only used by ``pt``.
    """

    variant: DMDVariant | str = DMDVariant.PT_STAR
    guidance: float = 4.5
    shift: float = 5.0
    sigma_min: float = 0.02
    sigma_max: float = 0.98
    critic_ratio: int = 5
    regression_weight: float = 0.01
    band_norm: str = "low"

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", DMDVariant.parse(self.variant))
        if not 0.0 <= self.sigma_min < self.sigma_max <= 1.0:
            raise ValueError(f"need 0 <= sigma_min < sigma_max <= 1, got {self.sigma_min}, {self.sigma_max}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.critic_ratio < 1:
            raise ValueError(f"critic_ratio must be >= 1, got {self.critic_ratio}")
        if self.regression_weight < 0:
            raise ValueError(f"regression_weight must be >= 0, got {self.regression_weight}")
        if self.band_norm not in ("low", "none"):
            raise ValueError(f"band_norm must be 'low' or 'none', got {self.band_norm!r}")

    def is_generator_step(self, step: int) -> bool:
        """Whether training step ``step`` (from 0) also updates the generator (every ``critic_ratio``-th).

        >>> [DMDConfig().is_generator_step(s) for s in range(6)]
        [True, False, False, False, False, True]
        """
        return step % self.critic_ratio == 0


def score_sigmas(
    batch: int,
    *,
    shift: float = 5.0,
    window: tuple[float, float] = (0.0, 1.0),
    clamp: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
    device: Any = None,
) -> torch.Tensor:
    """Per-sample score levels ``(B,)`` (float64): uniform in the unshifted variable over ``window``,
    shifted by ``shift``, clamped to ``clamp`` intersected with ``window``.

    With the window ``(0, 1)`` this is CausVid's draw (uniform ``t``, shift, clamp to ``[20, 980]``);
    a stage window draws the stage's piece of that distribution (as
    :func:`pyrflow_ref.windows.step_grid` does for step grids).
    """
    lo, hi = float(window[0]), float(window[1])
    a, b = max(lo, clamp[0]), min(hi, clamp[1])
    if not 0.0 <= lo < hi <= 1.0 or a > b:
        raise ValueError(f"window {window} and clamp {clamp} leave no admissible score level")
    u_lo, u_hi = float(unshift_sigma(lo, shift)), float(unshift_sigma(hi, shift))
    u = u_lo + (u_hi - u_lo) * torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    return shift_sigma(u, shift).clamp(a, b)


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in the standard form ``u + w (c - u)``.

    >>> cfg_combine(torch.tensor(1.0), torch.tensor(3.0), 4.5).item()
    10.0
    """
    return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class StageProcess:
    r"""The forward process a DMD variant re-noises a stage's clean prediction with.

    :param sigma_c: cleaner end of the window.
    :param sigma_n: noisier end (1 for the plain process and the coarsest stage).
    :param gain: the stage's per-frame gain :math:`g_i` ``(F,)`` or a number (what the
        natural-scale contract divides by).
    :param project: :math:`P` of the level below the stage; required when ``sigma_n < 1``.
    """

    sigma_c: float
    sigma_n: float
    gain: Any = 1.0
    project: Projection | None = None

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
        """The pyramidal process of ``stage`` (``frames``: the stage's latent frame count, for the gain)."""
        project = pyramid.levels[stage].project if stage < pyramid.num_stages - 1 else None
        return cls(windows.sigma_c(stage), windows.sigma_n(stage), pyramid.gain(stage, frames), project)

    @classmethod
    def for_variant(
        cls, variant: DMDVariant | str, pyramid: Pyramid, windows: StageWindows, stage: int, frames: int
    ) -> StageProcess:
        """OT: :meth:`plain` with the stage's gain; PT and PT*: :meth:`pyramidal`."""
        if DMDVariant.parse(variant).pyramidal:
            return cls.pyramidal(pyramid, windows, stage, frames)
        return cls.plain(pyramid.gain(stage, frames))

    # ----------------------------------------------------------------------- coefficients
    def rho(self, sigma) -> torch.Tensor:
        """Local level inside the window."""
        return rho(sigma, self.sigma_c, self.sigma_n)

    def band_weights(self, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Band weights of :math:`M^\top M`: :math:`((1 - \sigma)^2, ((1 - \rho)(1 - \sigma_c))^2)`."""
        s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
        return (1 - s) ** 2, ((1 - self.rho(s)) * (1 - self.sigma_c)) ** 2

    def _bands(self, x: torch.Tensor, low, high) -> torch.Tensor:
        """``low P x + high (I - P) x`` (``low``, ``high`` scalar or ``(B,)``)."""
        lo = batch_scalar(low, x.ndim, x.dtype, x.device)
        hi = batch_scalar(high, x.ndim, x.dtype, x.device)
        if self.project is None:  # sigma_n = 1: both coefficients agree, M = (1 - sigma) I
            return lo * x
        px = self.project(x)
        return lo * px + hi * (x - px)

    def apply_m(self, x0: torch.Tensor, sigma) -> torch.Tensor:
        r""":math:`M x_0 = (1 - \sigma) P x_0 + (1 - \rho)(1 - \sigma_c)(I - P) x_0`."""
        s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else torch.float64)
        return self._bands(x0, 1 - s, (1 - self.rho(s)) * (1 - self.sigma_c))

    def apply_mtm(self, d: torch.Tensor, sigma, band_norm: str = "none") -> torch.Tensor:
        r""":math:`M^\top M d` by band weights; ``band_norm="low"`` divides both by :math:`(1-\sigma)^2`."""
        low, high = self.band_weights(sigma)
        if band_norm == "low":
            low, high = torch.ones_like(low), high / low
        elif band_norm != "none":
            raise ValueError(f"band_norm must be 'low' or 'none', got {band_norm!r}")
        return self._bands(d, low, high)

    # ---------------------------------------------------------------------- the process
    def noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
        r"""The stage sample :math:`(1 - \rho) y_c + \rho y_n` (:math:`= M x_0 + \sigma\epsilon`)."""
        coarse = self.project(x0) if self.project is not None else torch.zeros_like(x0)
        return pyramidal_x(y_c(x0, eps, self.sigma_c), y_n(coarse, eps, self.sigma_n), self.rho(sigma))

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        r"""Flow-matching target :math:`dx/d\sigma = (y_n - y_c)/(\sigma_n - \sigma_c)`."""
        coarse = self.project(x0) if self.project is not None else torch.zeros_like(x0)
        yc, yn = y_c(x0, eps, self.sigma_c), y_n(coarse, eps, self.sigma_n)
        return (yn - yc) / (self.sigma_n - self.sigma_c)

    def eps(self, x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
        r"""Closed-form noise :math:`\epsilon = (x - M x_0)/\sigma` (uses :math:`P^2 = P`)."""
        return (x - self.apply_m(x0, sigma)) / batch_scalar(sigma, x.ndim, x.dtype, x.device)

    def _frame_gain(self, x: torch.Tensor) -> torch.Tensor:
        """The gain as a per-frame ``(F,)`` tensor (a number is used for every frame)."""
        g = torch.as_tensor(self.gain, dtype=None if torch.is_tensor(self.gain) else torch.float64)
        return g.expand(x.shape[-3]) if g.ndim == 0 else g

    def natural_input(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        r"""What a natural-scale backbone sees of ``x``: :math:`(x / c, 1000\,\varsigma)`, ``t`` per frame ``(B, F)``."""
        g = torch.as_tensor(self._frame_gain(x), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        s, gg = per_frame(sigma, g, x.ndim)
        return x / scale_c(s, gg), timesteps(sigma, g, x.shape[0])

    def velocity(self, model: Model, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        r""":math:`dx/d\sigma` of a natural-scale backbone at the stage's gain."""
        return model_velocity(model, x, sigma, self._frame_gain(x), cond)

    def x0(self, x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
        """Clean prediction from a velocity (:func:`pyrflow_fast.process.x0_from_velocity`)."""
        return x0_from_velocity(x, v, sigma, self.sigma_c, self.sigma_n, self.project)

    def denoise(self, model: Model, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        """The model's clean prediction at ``(x, sigma)``."""
        return self.x0(x, self.velocity(model, x, sigma, cond), sigma)


def dmd_gradient(
    x_gen: torch.Tensor,
    x0_fake: torch.Tensor,
    x0_real: torch.Tensor,
    weight: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""The DMD gradient :math:`W(x_0^{fake} - x_0^{real}) / \operatorname{mean}|\hat x_0 - x_0^{real}|` (per sample).

    Computed without gradient in at least float32; ``weight`` is :math:`W` (identity if None).
    The per-sample normaliser is floored at the dtype's smallest normal number.
    """
    dtype = torch.promote_types(x_gen.dtype, torch.float32)
    with torch.no_grad():
        gen, fake, real = x_gen.detach().to(dtype), x0_fake.to(dtype), x0_real.to(dtype)
        diff = fake - real
        if weight is not None:
            diff = weight(diff)
        norm = (gen - real).abs().flatten(1).mean(dim=1).clamp_min(torch.finfo(dtype).tiny)
        return diff / norm.reshape((-1,) + (1,) * (diff.ndim - 1))


def generator_loss(x_gen: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac12 \operatorname{mean}(\hat x_0 - \mathrm{sg}(\hat x_0 - \mathrm{grad}))^2` over all elements; its gradient is ``grad / numel``."""
    x = x_gen.to(torch.promote_types(x_gen.dtype, torch.float32))
    return 0.5 * F.mse_loss(x, (x - grad.to(x.dtype)).detach(), reduction="mean")


def regression_loss(x_gen: torch.Tensor, x_teacher: torch.Tensor) -> torch.Tensor:
    """Teacher regression ``mean((x_gen - x_teacher)^2)`` (e.g. the teacher's multi-step sample from the same noise)."""
    x = x_gen.to(torch.promote_types(x_gen.dtype, torch.float32))
    return F.mse_loss(x, x_teacher.detach().to(x.dtype), reduction="mean")


def critic_loss(v_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Flow-matching loss :math:`\operatorname{mean}(dx/d\sigma_{pred} - dx/d\sigma)^2` in at least float32."""
    dtype = torch.promote_types(v_pred.dtype, torch.float32)
    return F.mse_loss(v_pred.to(dtype), target.detach().to(dtype), reduction="mean")


@dataclass(frozen=True)
class DMDLoss:
    """Result of :meth:`DMD.generator_loss`.

    :param total: ``dmd + regression_weight * regression`` (differentiable in the generator).
    :param dmd: the DMD surrogate loss.
    :param regression: the teacher-regression loss (None without a target).
    :param grad: the DMD gradient (detached).
    :param sigma: the per-sample score levels ``(B,)``.
    :param x0_fake: the critic's clean prediction.
    :param x0_real: the guided teacher's clean prediction.
    """

    total: torch.Tensor
    dmd: torch.Tensor
    regression: torch.Tensor | None
    grad: torch.Tensor
    sigma: torch.Tensor
    x0_fake: torch.Tensor
    x0_real: torch.Tensor


class DMD:
    """DMD losses for a generator, a frozen real score and a trainable fake score.

    :param real: the teacher (natural-scale backbone, samplers' :data:`~pyrflow_fast.samplers.Model`).
    :param fake: the critic (same contract).
    :param config: :class:`DMDConfig`.
    :param uncond: the unconditional ``cond`` for the teacher's CFG (e.g. empty-prompt embeddings).
    """

    def __init__(self, real: Model, fake: Model, config: DMDConfig | None = None, uncond: Any = None) -> None:
        self.real = real
        self.fake = fake
        self.config = config if config is not None else DMDConfig()
        self.uncond = uncond

    @property
    def variant(self) -> DMDVariant:
        """The configured :class:`DMDVariant`."""
        return self.config.variant

    def process(self, pyramid: Pyramid, windows: StageWindows, stage: int, frames: int) -> StageProcess:
        """The variant's :class:`StageProcess` for ``stage``."""
        return StageProcess.for_variant(self.variant, pyramid, windows, stage, frames)

    def sigmas(
        self, process: StageProcess, batch: int, generator: torch.Generator | None = None, device: Any = None
    ) -> torch.Tensor:
        """Score levels ``(B,)`` for ``process`` (its window; shift and clamp from the config)."""
        c = self.config
        window, clamp = (process.sigma_c, process.sigma_n), (c.sigma_min, c.sigma_max)
        return score_sigmas(batch, shift=c.shift, window=window, clamp=clamp, generator=generator, device=device)

    def _noisy(self, x_gen: torch.Tensor, process: StageProcess, generator: torch.Generator | None):
        """``(x0, sigma, eps, x)``: the detached sample, score levels, noise (drawn after sigma), noisy sample."""
        x0 = x_gen.detach()
        sigma = self.sigmas(process, x0.shape[0], generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return x0, sigma, eps, process.noise(x0, eps, sigma)

    def teacher(self) -> Model:
        """The teacher as a model, guided when ``guidance != 1``."""
        g = self.config.guidance
        return self.real if g == 1.0 else cfg(self.real, g, self.uncond)

    def generator_loss(
        self,
        x_gen: torch.Tensor,
        process: StageProcess,
        cond: Any = None,
        *,
        x_teacher: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DMDLoss:
        """The generator's loss on its clean stage prediction ``x_gen`` (with gradient).

        :param x_teacher: target of the optional regression term (weighted by ``regression_weight``).
        :param generator: source of the score levels and the noise (drawn on ``x_gen``'s device).
        """
        _, sigma, _, x = self._noisy(x_gen, process, generator)
        with torch.no_grad():
            x0_real = process.denoise(self.teacher(), x, sigma, cond)
            x0_fake = process.denoise(self.fake, x, sigma, cond)
        weight = None
        if self.variant is DMDVariant.PT:
            weight = lambda d: process.apply_mtm(d, sigma, self.config.band_norm)  # noqa: E731
        grad = dmd_gradient(x_gen, x0_fake, x0_real, weight)
        dmd = generator_loss(x_gen, grad)
        reg = None
        total = dmd
        if x_teacher is not None:
            reg = regression_loss(x_gen, x_teacher)
            total = dmd + self.config.regression_weight * reg
        return DMDLoss(total, dmd, reg, grad, sigma, x0_fake, x0_real)

    def critic_loss(
        self, x_gen: torch.Tensor, process: StageProcess, cond: Any = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The critic's flow-matching loss on a re-noised, detached generator sample."""
        x0, sigma, eps, x = self._noisy(x_gen, process, generator)
        return critic_loss(process.velocity(self.fake, x, sigma, cond), process.target(x0, eps))
