r"""Adversarial distillation: frozen diffusion-backbone features, a light conv head, hinge loss.

The discriminator (theory §4) is a **frozen** :class:`~pyrflow_fast.wan.WanDiT` used as a
feature extractor (:class:`FeatureExtractor`: the token outputs of chosen blocks, reshaped to
``(B, dim, F', H', W')``) plus a small trainable head (:class:`DiscriminatorHead`): per chosen
block, a spatial branch (``(1, 3, 3)`` convolutions) and a temporal branch (``(3, 1, 1)``
convolutions), each producing a per-position logit map that is averaged; the logits of all
branches and blocks are summed. Which backbone is passed decides the variant: the original Wan
(**OD**) or the pyramidal finetune (**PD**). The backbone sees what it is trained on: a
natural-scale (re-noised) latent and its timesteps, exactly the arguments of ``WanDiT.forward``;
for a stage sample use :meth:`pyrflow_fast.process.StageProcess.natural_input`, e.g.
``disc(*process.natural_input(process.sample(x0, eps, sigma), sigma), context)``.

Losses, with :math:`D` the summed logits of a batch (means over the batch):

.. math::

    L_D &= \operatorname{mean}\,\mathrm{relu}(1 - D(x_{real})) + \operatorname{mean}\,\mathrm{relu}(1 + D(x_{fake})), \\
    L_G &= \lambda_{adv}\,\big(-\operatorname{mean} D(x_{fake})\big)
          + \lambda_{rec}\,\operatorname{mean}(\hat x_0 - x_0^{target})^2,
    \qquad \lambda_{adv} = 1,\ \lambda_{rec} = 2,

where the reconstruction target is the teacher's continuation of the state the student denoised
(:meth:`~pyrflow_fast.train.methods.few_step.FewStepDistillation.teacher_target` with ``start``).
Gradients of :math:`L_G` reach the generator *through* the frozen backbone (its parameters get
none); gradients of :math:`L_D` reach only the head.

>>> hinge_loss(torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])).item()
0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AdversarialLoss",
    "Discriminator",
    "DiscriminatorHead",
    "FeatureExtractor",
    "generator_adversarial_loss",
    "generator_loss",
    "hinge_loss",
    "reconstruction_loss",
]


class _StopForward(Exception):
    """Raised by the last feature hook to skip the blocks (and head) nobody needs."""


class FeatureExtractor(nn.Module):
    """Token features of chosen blocks of a frozen ``WanDiT``.

    :param model: the backbone (original Wan: OD; pyramidal finetune: PD). Its parameters are
        frozen (``requires_grad_(False)``) and it is kept in eval mode.
    :param blocks: block indices whose outputs are returned (sorted, unique, in range).

    ``extractor(x, t, context, **kwargs)`` takes ``WanDiT.forward``'s arguments and returns one
    float32 tensor ``(B, dim, F', H', W')`` per chosen block (``F' = F / pt`` etc.). The forward
    stops after the deepest chosen block.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[int]) -> None:
        super().__init__()
        n = len(model.blocks)
        idx = sorted({int(b) for b in blocks})
        if not idx or idx[0] < 0 or idx[-1] >= n:
            raise ValueError(f"feature blocks {list(blocks)} must be non-empty indices in [0, {n})")
        self.model = model.requires_grad_(False).eval()
        self.blocks = tuple(idx)
        self._store: dict[int, torch.Tensor] | None = None
        self._handles = [model.blocks[i].register_forward_hook(self._hook(i)) for i in idx]

    @property
    def dim(self) -> int:
        return self.model.config.dim

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The backbone stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self._store is None:  # outside our forward (e.g. a checkpoint recomputation)
                return
            self._store[index] = output
            if index == self.blocks[-1]:
                raise _StopForward

        return hook

    def forward(self, x: torch.Tensor, t: Any, context: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
        """Features ``(B, dim, F', H', W')`` of the chosen blocks, shallowest first."""
        pt, ph, pw = self.model.config.patch_size
        b, _, f, h, w = x.shape
        grid = (f // pt, h // ph, w // pw)
        self._store = {}
        try:
            self.model(x, t, context, **kwargs)
        except _StopForward:
            pass
        finally:
            store, self._store = self._store, None
        if len(store) != len(self.blocks):
            raise RuntimeError(f"feature hooks fired for blocks {sorted(store)}, expected {list(self.blocks)}")
        # block outputs are (B, F', S, dim) tokens ordered (f, h, w)
        return [store[i].float().reshape(b, *grid, -1).permute(0, 4, 1, 2, 3) for i in self.blocks]

    def remove(self) -> None:
        """Detach the hooks from the backbone."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _branch(dim: int, hidden: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(dim, hidden, kernel, padding=pad), nn.SiLU(), nn.Conv3d(hidden, 1, 1))


class DiscriminatorHead(nn.Module):
    """Per feature map: GroupNorm, then a spatial ``(1,3,3)`` and a temporal ``(3,1,1)`` conv branch.

    Each branch maps ``(B, dim, F', H', W')`` to a logit map ``(B, 1, F', H', W')`` that is averaged
    over positions; :meth:`forward` returns the sum over branches and feature maps, ``(B,)``.

    :param dim: feature channels (the backbone width).
    :param num_features: number of feature maps (chosen blocks).
    :param hidden: channels of each branch's hidden layer.
    """

    def __init__(self, dim: int, num_features: int, hidden: int = 128) -> None:
        super().__init__()
        groups = math.gcd(32, dim)
        self.norms = nn.ModuleList(nn.GroupNorm(groups, dim) for _ in range(num_features))
        self.spatial = nn.ModuleList(_branch(dim, hidden, (1, 3, 3)) for _ in range(num_features))
        self.temporal = nn.ModuleList(_branch(dim, hidden, (3, 1, 1)) for _ in range(num_features))

    def branch_logits(self, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(spatial, temporal)`` logit maps ``(B, 1, F', H', W')`` per feature map."""
        if len(features) != len(self.norms):
            raise ValueError(f"expected {len(self.norms)} feature maps, got {len(features)}")
        out = []
        for feat, norm, sp, tp in zip(features, self.norms, self.spatial, self.temporal, strict=True):
            h = norm(feat)
            out.append((sp(h), tp(h)))
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Summed logits ``(B,)``."""
        return sum(s.flatten(1).mean(1) + t.flatten(1).mean(1) for s, t in self.branch_logits(features))


class Discriminator(nn.Module):
    """Frozen :class:`FeatureExtractor` plus a trainable :class:`DiscriminatorHead`.

    :param backbone: the frozen ``WanDiT`` (OD or PD).
    :param blocks: feature block indices.
    :param hidden: head width.
    """

    def __init__(self, backbone: nn.Module, blocks: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        self.features = FeatureExtractor(backbone, blocks)
        self.head = DiscriminatorHead(self.features.dim, len(self.features.blocks), hidden)

    def forward(self, x: torch.Tensor, t: Any, context: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits ``(B,)`` of a natural-scale latent at timesteps ``t``."""
        return self.head(self.features(x, t, context, **kwargs))


def hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean relu(1 - D(real)) + mean relu(1 + D(fake))``."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean D(fake)``."""
    return -fake_logits.mean()


def reconstruction_loss(x_gen: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((x_gen - target)^2)`` in at least float32 (``target`` detached)."""
    x = x_gen.to(torch.promote_types(x_gen.dtype, torch.float32))
    return F.mse_loss(x, target.detach().to(x.dtype))


@dataclass(frozen=True)
class AdversarialLoss:
    """Result of :func:`generator_loss`: ``total = adv_weight * adversarial + rec_weight * reconstruction``."""

    total: torch.Tensor
    adversarial: torch.Tensor
    reconstruction: torch.Tensor | None


def generator_loss(
    fake_logits: torch.Tensor,
    x_gen: torch.Tensor,
    target: torch.Tensor | None,
    adv_weight: float = 1.0,
    rec_weight: float = 2.0,
) -> AdversarialLoss:
    """The generator's loss ``1.0 * adversarial + 2.0 * reconstruction`` (weights as in the paper); without a
    ``target`` the adversarial term alone (``reconstruction`` is None)."""
    adv = generator_adversarial_loss(fake_logits)
    if target is None:
        return AdversarialLoss(adv_weight * adv, adv, None)
    rec = reconstruction_loss(x_gen, target)
    return AdversarialLoss(adv_weight * adv + rec_weight * rec, adv, rec)
