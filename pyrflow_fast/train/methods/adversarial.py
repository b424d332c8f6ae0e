r"""Adversarial distillation: :class:`AdversarialDistillation` (OD: original features, PD: pyramidal teacher's).

The critic is a discriminator head (:class:`~pyrflow_fast.distill.adversarial.Discriminator`) on
frozen block features of the original Wan (OD) or of the pyramidal teacher (PD); real samples are
dataset stage signals, fake ones the student's :math:`\hat x_0`, both re-noised with the stage's
pyramidal process at one score level. Hinge loss for the head,
``adv_weight * adversarial + rec_weight * reconstruction`` for the generator (reconstruction
target: the pyramidal teacher's multi-step continuation of the state the student denoised, fresh
roll-out noise included, at the rolled-out stage).

With ``distill.dmd_weight > 0`` the GAN term is added to DMD, as DMD2 does: a fake score (a copy of
the pyramidal teacher) trains beside the head (the critic loss is the sum of the hinge and DMD's
flow-matching loss) and the generator loss gains ``dmd_weight`` times DMD-PT*'s (pyramidal teacher and
process, its regression term at ``distill.regression_weight``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...distill import adversarial
from ...distill.dmd import DMD, DMDVariant, score_sigmas
from ...process import StageProcess
from ...samplers import Prediction
from ..distributed import Distributed
from .few_step import FewStepDistillation

__all__ = ["AdversarialDistillation"]


class AdversarialDistillation(FewStepDistillation):
    """Adversarial distillation of the student (role ``"critic"``: the discriminator head).

    :param original_features: the discriminator reads the original Wan's features (OD, from
        ``model.original_path``), else the pyramidal teacher's (PD).
    """

    def __init__(self, config, dist: Distributed, dataset=None, *, original_features: bool) -> None:
        super().__init__(config, dist, dataset)
        d = config.distill
        self._pyramidal_teacher()
        if original_features:
            self.original = self._frozen(self._load(config.model.original_path or config.model.path, self.frozen_dtype))
            backbone = self.original
        elif self.teacher_model is not None:
            backbone = self.teacher_model
        else:
            backbone = self._frozen(self._copy(self.student, self.frozen_dtype))
        # the blocks' FSDP hooks come before the feature hooks, which stop the forward after the deepest block
        backbone.set_gradient_checkpointing(config.train.gradient_checkpointing)
        n = len(backbone.blocks)
        blocks = list(d.feature_blocks) or sorted({n // 2, n - 1})
        self.disc = adversarial.Discriminator(backbone, blocks, d.disc_hidden).to(self.device)
        critic: nn.Module = self.disc.head
        self.dmd: DMD | None = None
        if d.dmd_weight > 0:  # DMD2: the GAN term added to DMD-PT*, its fake score trained beside the head
            self.fake_model, fake_fn = self._fake_score()
            self.dmd = DMD(self.pyr_teacher, fake_fn, DMDVariant.PT_STAR, d)
            critic = nn.ModuleDict({"head": self.disc.head, "fake": self.fake_model})
        self._finish(critic)

    def _shard(self) -> None:
        super()._shard()
        self.shard_root(self.disc.head)
        if self.dmd is not None:
            self.shard_root(self.fake_model)

    def _disc_inputs(self, x0: torch.Tensor, process: StageProcess, dr: dict[str, Any]):
        """Natural-scale re-noised input (and score levels) for the discriminator."""
        d = self.config.distill
        sigma = score_sigmas(
            x0.shape[0],
            shift=d.score_shift,
            window=(process.sigma_c, process.sigma_n),
            clamp=(d.sigma_min, d.sigma_max),
            rng=dr["rng"],
        )
        eps = torch.randn(x0.shape, generator=dr["rng"]).to(x0)
        return process.natural_input(process.sample(x0, eps, sigma), sigma)

    def critic_loss(self, dr: dict[str, Any], x0: torch.Tensor, stage: int, process: StageProcess) -> torch.Tensor:
        real = torch.stack([torch.as_tensor(it["x0s"][stage], dtype=torch.float32) for it in dr["items"]])
        with torch.no_grad():
            xr, tr = self._disc_inputs(real.to(self.device), process, dr)
            xf, tf = self._disc_inputs(x0, process, dr)
        loss = adversarial.hinge_loss(self.disc(xr, tr, dr["ctx"]), self.disc(xf, tf, dr["ctx"]))
        if self.dmd is not None:
            loss = loss + self.dmd.critic_loss(x0, process, dr["ctx"], rng=dr["rng"])
        return loss

    def generator_loss(
        self, dr: dict[str, Any], step: int, pred: Prediction
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = self.config.distill
        # the teacher continues the state the student denoised (its fresh in-stage noise included): a
        # target from the initial noise alone is not a function of the student's input, and regressing on
        # it pulls the student to a blurred mean
        target = self.teacher_target(dr, step, pred.stage, start=pred) if d.rec_weight > 0 else None
        head = list(self.disc.head.parameters())
        for p in head:
            p.requires_grad_(False)
        try:
            x0 = pred.x0
            xf, tf = self._disc_inputs(x0, pred.process, dr)
            out = adversarial.generator_loss(self.disc(xf, tf, dr["ctx"]), x0, target, d.adv_weight, d.rec_weight)
        finally:
            for p in head:
                p.requires_grad_(True)
        total, parts = out.total, {"adversarial": out.adversarial}
        if out.reconstruction is not None:
            parts["reconstruction"] = out.reconstruction
        if self.dmd is not None:
            dmd, dmd_parts = self._dmd_generator_loss(self.dmd, dr, step, pred, pred.process)
            total, parts = total + d.dmd_weight * dmd, {**parts, **dmd_parts}
        return total, parts
