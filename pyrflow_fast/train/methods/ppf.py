r"""Pyramidal patchification distillation: :class:`PPFDistillation` (finetune + DMD on the patch pyramid).

A :class:`~pyrflow_fast.ppf.PPFWan` built on the teacher is first finetuned by flow matching with
stages as stages (:func:`ppf_finetune`); the student is a PPFWan starting from it, rolled out with
the few-step sampler over its stages (:meth:`PPFDistillation.rollout`), and DMD runs with the plain
process (no resampling, DMD's OT form), the finetuned PPF model as real score and a copy of it as
critic (:class:`~pyrflow_fast.contract.PPFDenoiser` picks the stage from the noise level). The
export adds the per-stage layers (``ppf_stages.safetensors``) and ``ppf_patches`` to the card.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyrflow_ref.windows import StageWindows, parse_schedule

from ...card import PPF_FILE
from ...contract import FrozenDenoiser, PPFDenoiser, check_ppf_windows
from ...distill.dmd import DMDVariant, critic_loss, score_sigmas
from ...ppf import PPFWan, ppf_stages, sample_ppf
from ...samplers import Prediction
from ..distributed import Distributed, full_state
from ..sharding import copy_shards
from .dmd import DMDDistillation, teacher_finetune

__all__ = ["PPFDistillation", "ppf_finetune"]


def ppf_finetune(
    ppf: nn.Module,
    batches: Callable[[int], tuple[list[torch.Tensor], torch.Tensor]],
    windows: StageWindows,
    steps: int,
    lr: float,
    *,
    seed: int = 0,
    grad_clip: float = 1.0,
    shift: float = 1.0,
) -> list[float]:
    r"""Diffusion (flow-matching) finetune of a :class:`~pyrflow_fast.ppf.PPFWan`, in place: stages as stages.

    Step ``n`` takes ``batches(n) = (x0s, context)`` and trains every stage ``l`` on the
    full-resolution ``x0s[0]`` with the plain process :math:`x = (1 - \sigma) x_0 + \sigma\epsilon`,
    :math:`\sigma` in window ``l`` of ``windows`` (uniform in the unshifted variable, then shifted by
    ``shift``, :func:`~pyrflow_fast.distill.dmd.score_sigmas`), target :math:`\epsilon - x_0` (Wan's
    loss at gain 1). Returns the per-step losses.
    """

    def stage_losses(x0s: list[torch.Tensor], ctx: torch.Tensor, rng: torch.Generator):
        x0 = x0s[0]
        for stage in range(ppf.num_stages):
            window = (windows.sigma_c(stage), windows.sigma_n(stage))
            sigma = score_sigmas(x0.shape[0], shift=shift, window=window, clamp=(0.0, 1.0), rng=rng).to(x0.device)
            eps = torch.randn(x0.shape, generator=rng).to(x0)
            s = sigma.to(x0.dtype).reshape(-1, 1, 1, 1, 1)
            v = ppf((1 - s) * x0 + s * eps, 1000.0 * sigma.float(), ctx, stage=stage)
            yield critic_loss(v, eps - x0) / ppf.num_stages

    return teacher_finetune(ppf, batches, stage_losses, steps, lr, seed=seed, salt=13, grad_clip=grad_clip)


class PPFDistillation(DMDDistillation):
    """DMD of a PPF student against the finetuned PPF teacher (plain process: DMD's OT form)."""

    def __init__(self, config, dist: Distributed, dataset=None) -> None:
        super().__init__(config, dist, dataset, variant=DMDVariant.OT)

    def _check_card(self, path: str) -> None:
        """Any checkpoint starts a PPF run: its stages are patches on the full latent, which every checkpoint
        denoises (the paper's PPF finetunes the original, one-stage model)."""

    def _scores(self):
        """The finetuned PPF teacher (real score), the critic (a float32 copy of it) and the student (a PPFWan on
        the student holding the teacher's weights). Under FSDP each PPFWan is a root over its sharded blocks."""
        config, d = self.config, self.config.distill
        patches = tuple(tuple(int(v) for v in p) for p in d.ppf_patches)
        base = self._load(config.model.teacher_path or config.model.path)
        base.set_gradient_checkpointing(config.train.gradient_checkpointing)
        self.ppf_teacher = PPFWan(base, patches).to(self.device)
        self.shard_root(self.ppf_teacher)
        self._finetune_teacher(self.ppf_teacher, ppf_finetune, self.windows)
        self.ppf_student = PPFWan(self.student, patches).to(self.device)  # per-stage layers trainable (also with LoRA)
        self.shard_root(self.ppf_student)
        copy_shards(self.ppf_student, self.ppf_teacher)
        self.gen_module = self.ppf_student
        self.card_patches = self.ppf_student.patches
        critic_base = self._copy(base)
        critic_base.set_gradient_checkpointing(config.train.gradient_checkpointing)
        critic = PPFWan(critic_base, patches).to(self.device)
        self.shard_root(critic)
        copy_shards(critic, self.ppf_teacher)
        critic.requires_grad_(True).train()
        self._frozen(self.ppf_teacher)
        return FrozenDenoiser(PPFDenoiser(self.ppf_teacher, self.windows)), critic, PPFDenoiser(critic, self.windows)

    def _shard(self) -> None:
        """The PPF models are sharded in :meth:`_scores`: their roots are the PPFWan wrappers, whose forward runs."""

    def rollout(self, dr: dict[str, Any], grad: bool) -> Prediction:
        """The PPF student's ``k``-th clean prediction at full resolution, its stage and the plain process:
        the few-step sampler over the student's stages (no pyramid) stopped at evaluation ``k``."""
        check_ppf_windows(self.ppf_student, self.windows)
        return self._few_step(ppf_stages(self.ppf_student), dr["eps0"], None, dr, grad)

    @torch.no_grad()
    def teacher_target(self, dr: dict[str, Any], step: int, stage: int) -> torch.Tensor:
        """The PPF teacher's multi-step sample: no resampling, the full-resolution sample at every stage."""
        d = self.config.distill
        return sample_ppf(
            self.ppf_teacher,
            dr["eps0"],
            dr["ctx"],
            self.windows,
            parse_schedule(d.regression_schedule, self.S),
            shift=d.sample_shift,
            guidance=d.guidance,
            uncond=torch.zeros_like(dr["ctx"]),
            rng=self._target_rng(dr, step),
        )

    def export(self, folder: Path, ema: dict[str, dict[str, torch.Tensor]]) -> None:
        """The distilled export plus the per-stage layers (``ppf_stages.safetensors``, read by
        :func:`pyrflow_fast.card.load_ppf`)."""
        state = self.ppf_student.state_dict()
        stages = full_state(((k, v) for k, v in state.items() if not k.startswith("model.")), self.rank == 0)
        super().export(folder, ema)
        if self.rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in stages.items()}, str(folder / PPF_FILE))
