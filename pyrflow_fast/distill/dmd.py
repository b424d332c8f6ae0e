r"""Distribution matching distillation (DMD) in flow-matching form, for plain and pyramidal stages.

Three roles (theory §4): the **generator** (student) produces the clean signal
:math:`\hat x_0` of a stage; the **real score** (frozen teacher, with classifier-free guidance)
and the **fake score** (critic, trained online by flow matching on generator samples) both
denoise a re-noised generator sample. Every model here is a natural-scale backbone with the
samplers' contract ``model(x / c, 1000 * varsigma, cond) -> v_hat``
(:mod:`pyrflow_fast.samplers`), evaluated through :meth:`pyrflow_fast.process.StageProcess.velocity`.

Re-noising (:class:`pyrflow_fast.process.StageProcess`)
-------------------------------------------------------
Inside a stage with window :math:`[\sigma_c, \sigma_n]`, local level
:math:`\rho = (\sigma - \sigma_c)/(\sigma_n - \sigma_c)` and the projection :math:`P` onto the
low band of the stage below (Definition 1, :math:`\mathrm{up}(x_0^{(i+1)}) = P x_0`), the
pyramidal forward process is linear in :math:`x_0`:

.. math::

    x = M x_0 + \sigma \epsilon, \qquad
    M = (1 - \sigma) P + (1 - \rho)(1 - \sigma_c)(I - P),

so the noise is recoverable in closed form, :math:`\epsilon = (x - M x_0)/\sigma` (proved in
``proofs/pt_dmd.py`` from :math:`P^\top = P`, :math:`P^2 = P`). The plain process
:math:`x = (1 - \sigma) x_0 + \sigma\epsilon` is the window :math:`[0, 1]`, where
:math:`M = (1 - \sigma) I` and no :math:`P` is needed. Clean predictions are decoded by
:meth:`~pyrflow_fast.process.StageProcess.x0_from_velocity` (plain: :math:`x - \sigma v`);
:func:`variant_process` picks a variant's process.

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

where :math:`u, c` are the teacher's unconditional and conditional natural velocities (guidance
in the standard form, :func:`pyrflow_fast.samplers.guided`; the bridge to :math:`dx/d\sigma` and
the decoding are affine with condition-free offsets, so guiding :math:`\hat v` guides
:math:`x_0^{real}` identically).
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
>>> s = score_sigmas(1000, shift=5.0, rng=torch.Generator().manual_seed(0))
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

from ..contract import Denoiser
from ..process import StageProcess
from ..resample import Pyramid
from ..samplers import guided
from .config import DistillSection

__all__ = [
    "DMD",
    "DMDLoss",
    "DMDVariant",
    "critic_loss",
    "dmd_gradient",
    "generator_loss",
    "regression_loss",
    "score_sigmas",
    "variant_process",
]


class DMDVariant(str, enum.Enum):  # noqa: UP042 (a StrEnum would change str() of the members)
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


def score_sigmas(
    batch: int,
    *,
    shift: float = 5.0,
    window: tuple[float, float] = (0.0, 1.0),
    clamp: tuple[float, float] = (0.02, 0.98),
    rng: torch.Generator | None = None,
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
    u = u_lo + (u_hi - u_lo) * torch.rand(batch, generator=rng, dtype=torch.float64, device=device)
    return shift_sigma(u, shift).clamp(a, b)


def variant_process(
    variant: DMDVariant | str, pyramid: Pyramid, windows: StageWindows, stage: int, frames: int
) -> StageProcess:
    """The process ``variant`` re-noises ``stage`` with: OT :meth:`~StageProcess.plain` at the stage's gain,
    PT and PT* :meth:`~StageProcess.pyramidal`."""
    if DMDVariant.parse(variant).pyramidal:
        return StageProcess.pyramidal(pyramid, windows, stage, frames)
    return StageProcess.plain(pyramid.gain(stage, frames))


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
    r""":math:`\tfrac12 \operatorname{mean}(\hat x_0 - \mathrm{sg}(\hat x_0 - \mathrm{grad}))^2` over all elements.

    Its gradient is ``grad / numel``.
    """
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

    :param real: the teacher (natural-scale backbone, a :class:`~pyrflow_fast.contract.Denoiser`).
    :param fake: the critic (same contract).
    :param variant: a :class:`DMDVariant` or its name (default ``pt*``, the paper's final recipe).
    :param config: the ``[distill]`` section (:class:`~pyrflow_fast.distill.config.DistillSection`, checked by
        ``DistillConfig.validate``; default: its defaults): ``guidance`` (teacher CFG scale ``w`` in
        ``u + w (c - u)``), ``score_shift``, ``sigma_min`` / ``sigma_max`` (the score levels' shift and clamp),
        ``regression_weight`` and ``band_norm`` (PT's band weights) are read.
    :param uncond: the unconditional ``cond`` for the teacher's CFG (e.g. empty-prompt embeddings).
    """

    def __init__(
        self,
        real: Denoiser,
        fake: Denoiser,
        variant: DMDVariant | str = DMDVariant.PT_STAR,
        config: Any = None,
        uncond: Any = None,
    ) -> None:
        self.real = real
        self.fake = fake
        self.variant = DMDVariant.parse(variant)
        """The :class:`DMDVariant`."""
        self.config = config if config is not None else DistillSection()
        self.uncond = uncond

    def process(self, pyramid: Pyramid, windows: StageWindows, stage: int, frames: int) -> StageProcess:
        """The variant's :class:`StageProcess` for ``stage``."""
        return variant_process(self.variant, pyramid, windows, stage, frames)

    def sigmas(
        self, process: StageProcess, batch: int, rng: torch.Generator | None = None, device: Any = None
    ) -> torch.Tensor:
        """Score levels ``(B,)`` for ``process`` (its window; shift and clamp from the config)."""
        c = self.config
        window, clamp = (process.sigma_c, process.sigma_n), (c.sigma_min, c.sigma_max)
        return score_sigmas(batch, shift=c.score_shift, window=window, clamp=clamp, rng=rng, device=device)

    def _noisy(self, x_gen: torch.Tensor, process: StageProcess, rng: torch.Generator | None):
        """``(x0, sigma, eps, x)``: the detached sample, score levels, noise (drawn after sigma), noisy sample."""
        x0 = x_gen.detach()
        sigma = self.sigmas(process, x0.shape[0], rng, device=x0.device)
        eps = torch.randn(x0.shape, generator=rng, dtype=x0.dtype, device=x0.device)
        return x0, sigma, eps, process.sample(x0, eps, sigma)

    def teacher(self) -> Denoiser:
        """The teacher as a model, guided when ``guidance != 1``."""
        g = self.config.guidance
        return self.real if g == 1.0 else guided(self.real, g, self.uncond)

    def generator_loss(
        self,
        x_gen: torch.Tensor,
        process: StageProcess,
        cond: Any = None,
        *,
        x_teacher: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> DMDLoss:
        """The generator's loss on its clean stage prediction ``x_gen`` (with gradient).

        :param x_teacher: target of the optional regression term (weighted by ``regression_weight``).
        :param rng: source of the score levels and the noise (drawn on ``x_gen``'s device).
        """
        _, sigma, _, x = self._noisy(x_gen, process, rng)
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
        self,
        x_gen: torch.Tensor,
        process: StageProcess,
        cond: Any = None,
        *,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The critic's flow-matching loss on a re-noised, detached generator sample."""
        x0, sigma, eps, x = self._noisy(x_gen, process, rng)
        return critic_loss(process.velocity(self.fake, x, sigma, cond), process.target(x0, eps))
