r"""Distribution matching distillation: :class:`DMDDistillation` (variants OT, PT, PT* of :class:`DMDVariant`).

The critic is the fake score (flow matching on re-noised generator samples,
:meth:`pyrflow_fast.distill.dmd.DMD.critic_loss`); the generator loss is
:meth:`~pyrflow_fast.distill.dmd.DMD.generator_loss` with the guided real score (inference mode)
and the regression term towards the teacher's multi-step sample from the same noise at the
rolled-out stage. PT and PT* re-noise with the pyramidal process of the rolled-out stage and score
with the pyramidal teacher (PT weights the gradient by the bands). OT (the original Wan as
teacher) re-noises with the plain process at the stage's resolution, first finetunes the original
teacher briefly with flow matching at every stage resolution (:func:`multires_finetune`), and its
regression target is the teacher's plain multi-step sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from pyrflow_ref.windows import parse_schedule

from ...contract import BackboneDenoiser, FrozenDenoiser, WanBackbone
from ...distill.dmd import DMD, DMDVariant, critic_loss, score_sigmas
from ...process import StageProcess, clean_pyramid_latent
from ...resample import Pyramid
from ...samplers import Prediction, guided, sample_plain
from ..distributed import Distributed
from ..loss import sample_seed
from .few_step import FewStepDistillation

__all__ = ["DMDDistillation", "multires_finetune", "teacher_finetune"]


def multires_finetune(
    model: nn.Module,
    batches: Callable[[int], tuple[list[torch.Tensor], torch.Tensor]],
    pyramid: Pyramid,
    steps: int,
    lr: float,
    *,
    seed: int = 0,
    rope: str = "integer",
    grad_clip: float = 1.0,
    shift: float = 1.0,
) -> list[float]:
    r"""Brief multi-resolution flow-matching finetune of a plain (original) teacher, in place.

    Step ``n`` takes ``batches(n) = (x0s, context)``, clean stage signals finest first and
    contexts, and trains every stage ``i`` with the **plain** process at its resolution
    :math:`x = (1 - \sigma) x_0^{(i)} + \sigma \epsilon` (:meth:`~pyrflow_fast.process.StageProcess.plain` with the
    stage's gain, i.e. Wan's own process on the natural latent), the process ``dmd-ot`` re-noises
    with; :math:`\sigma` is uniform in the unshifted variable, then shifted by ``shift``
    (:func:`~pyrflow_fast.distill.dmd.score_sigmas`; 1: :math:`\sigma \sim U(0, 1)`). Returns the
    per-step losses.
    """
    fn = BackboneDenoiser(WanBackbone(model, rope=rope))

    def stage_losses(x0s: list[torch.Tensor], ctx: torch.Tensor, rng: torch.Generator):
        for i in range(pyramid.num_stages):
            x0 = x0s[i]
            process = StageProcess.plain(pyramid.gain(i, x0.shape[-3]))
            sigma = score_sigmas(x0.shape[0], shift=shift, clamp=(0.0, 1.0), rng=rng)
            eps = torch.randn(x0.shape, generator=rng)
            x = process.sample(x0, eps, sigma)
            yield critic_loss(process.velocity(fn, x, sigma, ctx), process.target(x0, eps)) / pyramid.num_stages

    return teacher_finetune(model, batches, stage_losses, steps, lr, seed=seed, salt=7, grad_clip=grad_clip)


def teacher_finetune(
    model: nn.Module,
    batches: Callable[[int], tuple[list[torch.Tensor], torch.Tensor]],
    losses_of: Callable[[list[torch.Tensor], torch.Tensor, torch.Generator], Iterator[torch.Tensor]],
    steps: int,
    lr: float,
    *,
    seed: int,
    salt: int,
    grad_clip: float,
) -> list[float]:
    """The AdamW loop of the teacher finetunes (:func:`multires_finetune`, PPF's ``ppf_finetune``), in place.

    Step ``n`` backpropagates each loss ``losses_of(x0s, context, rng)`` yields for ``batches(n)`` as it
    comes (one graph alive at a time), ``rng`` seeded by ``(seed, n, salt)``, then takes one clipped step.
    Returns the per-step sums of the losses.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for n in range(steps):
        rng = torch.Generator().manual_seed(sample_seed(seed, n, salt))
        x0s, ctx = batches(n)
        total = 0.0
        for loss in losses_of(x0s, ctx, rng):
            loss.backward()
            total += float(loss.detach())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


class DMDDistillation(FewStepDistillation):
    """DMD of the student against a frozen real score and a trained fake score (role ``"critic"``).

    :param variant: :class:`~pyrflow_fast.distill.dmd.DMDVariant` (OT, PT or PT*).
    """

    def __init__(self, config, dist: Distributed, dataset=None, *, variant: DMDVariant | str) -> None:
        super().__init__(config, dist, dataset)
        self.variant = DMDVariant.parse(variant)
        self.real_fn, self.critic_model, self.critic_fn = self._scores()
        self.dmd = DMD(self.real_fn, self.critic_fn, self.variant, config.distill)
        self._finish(self.critic_model)

    def _scores(self):
        """``(real score, critic module, critic score)`` in the samplers' contract; the critic starts as the teacher
        (float32, trained; the frozen teachers are in :attr:`frozen_dtype`)."""
        if self.variant.pyramidal:
            self._pyramidal_teacher()
            return self.pyr_teacher, *self._fake_score()
        config, d = self.config, self.config.distill
        finetune = d.teacher_finetune_steps > 0
        path = config.model.original_path or config.model.path
        self.original = self._load(path, torch.float32 if finetune else self.frozen_dtype)
        self.shard_root(self.original)
        self._finetune_teacher(self.original, multires_finetune, self.pyramid, rope=config.model.rope)
        critic = self._copy(self.original) if finetune else self._load(path)
        self.original.to(self.frozen_dtype)
        self._frozen(self.original)
        real = FrozenDenoiser(BackboneDenoiser(WanBackbone(self.original, rope=config.model.rope)))
        return real, *self._fake_score(critic)

    def _finetune_teacher(self, model: nn.Module, finetune: Callable, *args: Any, **kwargs: Any) -> None:
        """Run the config's teacher finetune ``finetune(model, batches, *args, steps, lr, ...)`` when it has
        steps (every rank trains on the same global batch; replicated weights take rank 0's result, FSDP
        averages the shards' gradients), then freeze ``model``: the finetuned teacher, checkpointed with the run."""
        config, d = self.config, self.config.distill
        if d.teacher_finetune_steps > 0:
            model.requires_grad_(True).train()
            self.teacher_losses = finetune(
                model,
                self._finetune_batch,
                *args,
                d.teacher_finetune_steps,
                d.teacher_finetune_lr,
                seed=config.train.seed,
                grad_clip=config.optim.grad_clip,
                shift=d.teacher_finetune_shift,
                **kwargs,
            )
            if not self.dist.fsdp:
                self.dist.broadcast(model)
            self.finetuned_teacher = model
        model.requires_grad_(False).eval()

    def _shard(self) -> None:
        super()._shard()
        self.shard_root(self.critic_model)

    def _score_process(self, process: StageProcess) -> StageProcess:
        """The process the scores re-noise with at the rolled-out stage (OT: plain with the stage's gain)."""
        return process if self.variant.pyramidal else StageProcess.plain(process.gain)

    @torch.no_grad()
    def teacher_target(self, dr: dict[str, Any], step: int, stage: int) -> torch.Tensor:
        """PT / PT*: the pyramidal teacher's sample; OT: the original teacher's plain Euler sample at
        stage-0 resolution with the sum of the regression schedule's steps, brought to ``stage``."""
        if self.variant.pyramidal:
            return super().teacher_target(dr, step, stage)
        d = self.config.distill
        steps = sum(parse_schedule(d.regression_schedule, self.S))
        model = self.real_fn.fn
        teacher = model if d.guidance == 1.0 else guided(model, d.guidance, torch.zeros_like(dr["ctx"]))
        x = sample_plain(teacher, dr["eps0"], steps, cond=dr["ctx"], shift=d.sample_shift)
        return clean_pyramid_latent(x, self.pyramid)[stage]

    def critic_loss(self, dr: dict[str, Any], x0: torch.Tensor, stage: int, process: StageProcess) -> torch.Tensor:
        return self.dmd.critic_loss(x0, self._score_process(process), dr["ctx"], rng=dr["rng"])

    def generator_loss(
        self, dr: dict[str, Any], step: int, pred: Prediction
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._dmd_generator_loss(self.dmd, dr, step, pred, self._score_process(pred.process))
