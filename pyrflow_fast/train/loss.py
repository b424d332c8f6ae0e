r"""The pyramidal flow-matching loss (theory §3) and its per-sample random draws.

For a sample assigned to stage :math:`i` with window :math:`[\sigma_c, \sigma_n]`:
:math:`\rho \sim U(0, 1)`, optionally shifted to :math:`\rho_s = s\rho / (1 + (s - 1)\rho)`
(``[loss] sigma_shift`` :math:`s`; :math:`s = 1` is the identity and :math:`s > 1` moves the draws
towards the noisy end exactly as a sampler's timestep shift moves its grid, so training sees the
noise levels the sampler spends its steps on), :math:`\sigma = \sigma_c + \rho_s(\sigma_n - \sigma_c)`, white noise
:math:`\epsilon` at the stage's resolution, and ``(x, target)`` from the stage's
:class:`~pyrflow_fast.process.StageProcess` (:math:`y_n` uses :math:`\mathrm{up}(x_0^{(i+1)})`; a
Definition-2 pyramid simply carries its own stage signals in ``x0s``). The backbone sees the
natural-scale input :math:`x / c` and per-frame timesteps :math:`t = 1000\,\varsigma(\sigma, g_i)`;
its natural velocity is mapped to :math:`dx/d\sigma` by :func:`~pyrflow_fast.natural.bridge_velocity`
and regressed on the target in float32:

.. math::

    L = \mathbb{E}\,\big\| \mathrm{bridge}(\hat v(x / c, 1000 \varsigma))
        - \tfrac{y_n - y_c}{\sigma_n - \sigma_c} \big\|^2 .

With :math:`S = 1` this is Wan's loss :math:`\|\hat v(x_\sigma, 1000\sigma) - (\epsilon - x_0)\|^2`.
An optional distillation term adds ``weight * ||dx/dsigma_student - dx/dsigma_teacher||^2`` with the
teacher's natural velocity on the same input mapped through the same bridge.

Every draw of a sample (``rho``, the text-dropout coin, ``eps``) comes from a generator seeded by
``(seed, step, slot)``, where ``slot`` is the sample's position in the step's *global* batch, so the
draws do not depend on how the batch is split over processes:

>>> a = draw(0, 3, 5, (4, 2, 4, 4))
>>> b = draw(0, 3, 5, (4, 2, 4, 4))
>>> a.rho == b.rho and bool(torch.equal(a.eps, b.eps)), 0.0 <= a.rho < 1.0
(True, True)
>>> stage_of_slot(7, 3)
1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pyrflow_ref.windows import StageWindows

from ..natural import scale_c, varsigma
from ..process import StageProcess, coarse_signal_up
from ..resample import Pyramid

__all__ = ["Draw", "GroupLoss", "PyramidalLoss", "draw", "sample_seed", "shift_level", "stage_of_slot"]

VelocityModel = Callable[..., torch.Tensor]
"""``model(x_nat, t, context, full_size=..., stage=...) -> v_hat`` (the trainer's wrapped backbone)."""


def stage_of_slot(slot: int, num_stages: int) -> int:
    """Stage of a slot of the global batch: slots cycle through the stages, so every contiguous
    block of ``k * S`` slots (one device's share) holds ``k`` samples of each stage."""
    return slot % num_stages


def sample_seed(seed: int, step: int, slot: int) -> int:
    """A 64-bit generator seed for ``(seed, step, slot)`` (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed), int(step), int(slot)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


@dataclass(frozen=True)
class Draw:
    """The random draws of one training sample."""

    rho: float
    drop_text: bool
    eps: torch.Tensor


def draw(seed: int, step: int, slot: int, shape: Sequence[int], text_dropout: float = 0.0) -> Draw:
    """``rho ~ U(0, 1)`` (float64), the text-dropout coin and float32 white noise of ``shape`` (CPU)."""
    gen = torch.Generator().manual_seed(sample_seed(seed, step, slot))
    rho = float(torch.rand((), dtype=torch.float64, generator=gen))
    coin = float(torch.rand((), dtype=torch.float64, generator=gen))
    eps = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    return Draw(rho, coin < text_dropout, eps)


def shift_level(rho: torch.Tensor, shift: float) -> torch.Tensor:
    r"""The shifted level :math:`s\rho / (1 + (s - 1)\rho)` of ``rho`` in ``[0, 1]`` (same shape and dtype).

    A monotone bijection of ``[0, 1]`` fixing 0 and 1; for ``rho ~ U(0, 1)`` its CDF is
    :math:`P(\rho_s \le u) = u / (s - (s - 1) u)`. ``shift = 1`` returns ``rho`` itself.

    >>> shift_level(torch.tensor([0.0, 0.2, 1.0], dtype=torch.float64), 5.0).tolist()
    [0.0, 0.5555555555555556, 1.0]
    """
    if shift == 1.0:
        return rho
    return shift * rho / (1 + (shift - 1) * rho)


@dataclass
class GroupLoss:
    """Per-sample losses of one stage group (float32, shape ``(B,)``)."""

    stage: int
    mse: torch.Tensor
    distill: torch.Tensor | None = None


class PyramidalLoss:
    r"""The pyramidal flow-matching loss over a pyramid and its stage windows.

    :param pyramid: the latent pyramid (``pyramid.num_stages == windows.num_stages``).
    :param windows: the stage windows.
    :param weighting: ``"sigma"`` (default, theory §3): MSE of :math:`dx/d\sigma` in
        orthonormal units; ``"natural"``: the same error divided per frame by the bridge factor
        :math:`(1 - \varsigma) + g\varsigma`, i.e. the MSE of the natural velocity (Pyramid
        Flow's natural-unit convention), which keeps coarse stages (gain up to 8) from dominating
        the gradient. Both are Wan's loss at ``S = 1``.
    :param sigma_shift: :math:`s` of the level shift :func:`shift_level` applied to every sample's
        ``rho`` before its stage window (1: none, the uniform draw).
    """

    def __init__(
        self, pyramid: Pyramid, windows: StageWindows, weighting: str = "sigma", sigma_shift: float = 1.0
    ) -> None:
        if pyramid.num_stages != windows.num_stages:
            raise ValueError(f"pyramid has {pyramid.num_stages} stages, windows {windows.num_stages}")
        if weighting not in ("sigma", "natural"):
            raise ValueError(f"weighting must be 'sigma' or 'natural', got {weighting!r}")
        if not (isinstance(sigma_shift, (int, float)) and 0 < sigma_shift < float("inf")):
            raise ValueError(f"loss.sigma_shift must be a positive finite number (1: no shift), got {sigma_shift!r}")
        self.pyramid = pyramid
        self.windows = windows
        self.weighting = weighting
        self.sigma_shift = float(sigma_shift)

    @property
    def num_stages(self) -> int:
        return self.pyramid.num_stages

    def process(self, stage: int, frames: int) -> StageProcess:
        """The pyramidal process of ``stage`` (``frames``: its latent frame count)."""
        return StageProcess.pyramidal(self.pyramid, self.windows, stage, frames)

    def inputs(
        self, x0s: Sequence[torch.Tensor], eps: torch.Tensor, rho, stage: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Model inputs and target of a stage group.

        :param x0s: batched clean stage signals ``(B, C, F_i, H_i, W_i)``, finest first (at least
            up to ``stage + 1`` when ``stage`` is not the coarsest).
        :param eps: ``(B, C, F, H, W)`` noise at the stage's shape.
        :param rho: ``(B,)`` local levels in ``[0, 1]`` (the uniform draws; :attr:`sigma_shift` is applied here).
        :returns: ``x``, ``target``, ``x_nat = x / c``, ``t`` ``(B, F)`` (float32) and the bridge
            coefficients ``(1 - g, (1 - vs) + g vs)`` shaped ``(B, 1, F, 1, 1)`` in ``x``'s dtype.
        """
        process = self.process(stage, x0s[stage].shape[-3])
        sigma = process.sigma(shift_level(torch.as_tensor(rho, dtype=torch.float64), self.sigma_shift))
        x, tgt = process.forward(x0s[stage], eps, sigma, coarse_signal_up(x0s, stage, self.pyramid))
        b, f = x.shape[0], x.shape[-3]
        # host-side float64 coefficients, cast once: with g = 1 they are exactly 1 and 0
        g = process.frame_gain(f)[None, :]
        s = sigma.reshape(b, 1)
        c = scale_c(s, g)
        vs = varsigma(s, g)
        k_x = (1 - g).expand(b, f)
        k_v = (1 - vs) + g * vs

        def shaped(v: torch.Tensor) -> torch.Tensor:
            return v.to(dtype=x.dtype, device=x.device).reshape(b, 1, f, 1, 1)

        x_nat = x / shaped(c)
        t = (1000.0 * vs).to(dtype=torch.float32, device=x.device)
        return x, tgt, x_nat, t, (shaped(k_x), shaped(k_v))

    @staticmethod
    def bridge(x_nat: torch.Tensor, v_hat: torch.Tensor, coef: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        r""":math:`dx/d\sigma = (1 - g)(x / c) + ((1 - \varsigma) + g\varsigma)\hat v` (:func:`bridge_velocity`)."""
        k_x, k_v = coef
        return k_x * x_nat + k_v * v_hat

    def group_loss(
        self,
        model: VelocityModel,
        x0s: Sequence[torch.Tensor],
        eps: torch.Tensor,
        rho,
        stage: int,
        context: torch.Tensor,
        *,
        full_size: Sequence[int] | None = None,
        teacher: VelocityModel | None = None,
    ) -> GroupLoss:
        """Per-sample float32 MSE of one stage group (one model call), plus the distillation MSE
        against ``teacher`` (called without gradients) when given."""
        x, tgt, x_nat, t, coef = self.inputs(x0s, eps, rho, stage)
        full = tuple(full_size) if full_size is not None else tuple(x0s[0].shape[-3:])
        v_hat = model(x_nat, t, context, full_size=full, stage=stage)
        coef = tuple(k.float() for k in coef)
        pred = self.bridge(x_nat.float(), v_hat.float(), coef)
        scale = coef[1] if self.weighting == "natural" else None
        mse = _mse(pred - tgt.float(), scale)
        distill = None
        if teacher is not None:
            with torch.no_grad():
                v_t = teacher(x_nat, t, context, full_size=full, stage=stage)
                pred_t = self.bridge(x_nat.float(), v_t.float(), coef)
            distill = _mse(pred - pred_t, scale)
        return GroupLoss(stage, mse, distill)

    def batch_loss(
        self,
        model: VelocityModel,
        items: Sequence[dict],
        stages: Sequence[int],
        draws: Sequence[Draw],
        *,
        teacher: VelocityModel | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, list[GroupLoss]]:
        """Mean loss over a list of samples (grouped by stage, one model call per group).

        :param items: dataset items (``x0s``, ``context``, ``context_len``).
        :param stages: stage of each item.
        :param draws: the draws of each item (``eps`` at the item's stage shape).
        :returns: the mean per-sample MSE and the per-group losses (in stage order).
        """
        groups = []
        for stage in sorted(set(stages)):
            idx = [n for n, s in enumerate(stages) if s == stage]
            x0s, eps, rho, ctx = collate(
                [items[n] for n in idx], [draws[n] for n in idx], stage, self.num_stages, device
            )
            groups.append(self.group_loss(model, x0s, eps, rho, stage, ctx, teacher=teacher))
        total = torch.cat([g.mse for g in groups]).mean()
        return total, groups


def _mse(err: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean square of ``err`` (divided by ``scale`` first when given)."""
    if scale is not None:
        err = err / scale
    return err.pow(2).flatten(1).mean(1)


def collate(
    items: Sequence[dict],
    draws: Sequence[Draw],
    stage: int,
    num_stages: int,
    device: torch.device | str | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch the items of one stage group: stage signals ``stage`` and ``stage + 1``, noise, rho
    and zero-padded contexts (Wan zero-pads contexts anyway, so padding changes nothing).

    Every item must have the same shape at these stages. Items may carry more stages than the
    pyramid trains (the finest ``num_stages`` are used).
    """
    top = min(stage + 2, num_stages)
    x0s: list[torch.Tensor] = []
    for k in range(top):
        if k < stage:  # unused by forward_sample; a meta tensor keeps the shape (full_size) for free
            x0s.append(torch.empty((len(items), *items[0]["x0s"][k].shape), device="meta"))
            continue
        shapes = {tuple(it["x0s"][k].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"stage {k} signals of one batch must have one shape, got {sorted(shapes)}")
        x0s.append(torch.stack([torch.as_tensor(it["x0s"][k], dtype=torch.float32) for it in items]).to(device))
    eps = torch.stack([d.eps for d in draws]).to(device)
    rho = torch.tensor([d.rho for d in draws], dtype=torch.float64)
    width = items[0]["context"].shape[-1]
    length = max(int(it["context_len"]) for it in items)
    ctx = torch.zeros(len(items), length, width, dtype=torch.float32)
    for n, (it, d) in enumerate(zip(items, draws, strict=True)):
        if not d.drop_text:
            m = int(it["context_len"])
            ctx[n, :m] = torch.as_tensor(it["context"], dtype=torch.float32)[:m]
    return x0s, eps, rho, ctx.to(device)
