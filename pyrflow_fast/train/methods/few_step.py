r"""What every few-step distillation method shares: :class:`FewStepDistillation`.

The methods (DMD OT / PT / PT*, adversarial OD / PD, PPF; :mod:`pyrflow_fast.train.methods`) are
run by :class:`pyrflow_fast.train.runner.Runner` (``pyrflow-distill``). One **iteration**
(``train.steps`` of them) draws, from generators seeded by ``(seed, iteration, global sample
slot)`` (so the world size does not change the samples; :meth:`FewStepDistillation.draws`), a
batch of prompts (contexts of dataset items; with ``data.text_dropout`` some are all-zero),
full-resolution white noise :math:`\epsilon_0` and a step :math:`k` of the student's schedule.
The student's initial noise is :math:`\mathrm{down}^{top}(\epsilon_0)` (orthonormal resampling
keeps it white). The **generator roll-out** (:meth:`FewStepDistillation.rollout`, backward
simulation) is the student's few-step sampler (x0 prediction, re-noise inside a stage, up +
re-noise across stages, no CFG), :func:`pyrflow_fast.samplers.sample_few_step` stopped at
evaluation :math:`k`: the evaluations before it run without gradient, and it returns the
:math:`k`-th clean prediction :math:`\hat x_0` of stage :math:`i` (with gradient on generator
iterations).

Every iteration updates the **critic** once on the detached :math:`\hat x_0`; every
``critic_ratio``-th (iterations 0, r, 2r, ...) also updates the **generator**:

- ``dmd-*`` (:mod:`~pyrflow_fast.train.methods.dmd`): the critic is the fake score (flow matching
  on re-noised generator samples, :meth:`pyrflow_fast.distill.dmd.DMD.critic_loss`), the
  generator loss is :meth:`~pyrflow_fast.distill.dmd.DMD.generator_loss` with the guided real
  score (run in ``torch.inference_mode``) and the regression term towards the teacher's
  multi-step sample from the same noise, brought to stage :math:`i` by Definition 1
  (:math:`\mathrm{down}^i`). ``dmd-ot`` re-noises with the plain process at stage :math:`i`'s
  resolution and first finetunes the original teacher briefly with flow matching at every stage
  resolution (:func:`~pyrflow_fast.train.methods.dmd.multires_finetune`); ``dmd-pt`` /
  ``dmd-pt*`` use the pyramidal teacher and process.
- ``adv-*`` (:mod:`~pyrflow_fast.train.methods.adversarial`): the critic is the discriminator
  head on frozen features of the original Wan (OD) or the pyramidal teacher (PD); real samples
  are dataset stage signals, fake ones the student's :math:`\hat x_0`, both re-noised with the
  stage's pyramidal process at one score level; hinge loss for the head, ``adv_weight *
  adversarial + rec_weight * reconstruction`` for the generator (reconstruction target: the
  teacher's continuation of the state the student denoised, its fresh noise included); with
  ``distill.dmd_weight > 0`` a DMD-PT* term is added (DMD2), its fake score trained with the head.
- ``ppf`` (:mod:`~pyrflow_fast.train.methods.ppf`): pyramidal patchification
  (:mod:`pyrflow_fast.ppf`). A :class:`~pyrflow_fast.ppf.PPFWan` built on the teacher is first
  finetuned by flow matching with patch sizes as stages
  (:func:`~pyrflow_fast.train.methods.ppf.ppf_finetune`: the plain process on the
  full-resolution latent, each stage on its window); the student is a PPFWan starting from it,
  rolled out with the same few-step sampler over its stages, and DMD runs with the plain process
  (no resampling), the finetuned PPF model as real score and a copy of it as critic
  (:class:`~pyrflow_fast.contract.PPFDenoiser` picks the level from the noise level). The export
  adds the per-stage layers (``ppf_stages.safetensors``) and ``ppf_patches`` to the card;
  :func:`pyrflow_fast.card.load_ppf` loads them.

With ``distill.lora_rank > 0`` only LoRA adapters of the student are trained (and, when the
pyramidal teacher is the initial model, the teacher is the student's base with the adapters off).
The ``[optim]`` schedule (warm-up, decay; :func:`pyrflow_fast.train.runner.lr_lambda`) counts
updates of each optimizer: iterations for the critic, generator updates for the generator.
Checkpoints are the runner's; the export is a model directory with a
``ModelCard(kind="distilled", schedule=...)`` that :func:`pyrflow_fast.sample.generate` samples
with the few-step sampler.

Two roles: ``"generator"`` (the student's trained parameters: LoRA adapters or the whole student,
plus PPF's per-stage layers) and ``"critic"`` (fake score or discriminator head). Neither runs under
a DDP wrapper: the runner averages their replicated gradients over the ranks before clipping. A
method adds its critic (:meth:`FewStepDistillation.critic_loss`) and generator loss
(:meth:`FewStepDistillation.generator_loss`).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyrflow_ref.plan import Plan

from ...card import CARD_FILE, ModelCard, write_model_dir
from ...contract import BackboneDenoiser, FrozenDenoiser, WanBackbone
from ...distill.dmd import DMD
from ...distill.lora import AdaptersOff, student_lora
from ...process import StageProcess, clean_pyramid_latent
from ...samplers import Prediction, guided, sample_euler, sample_few_step
from ...wan import WanDiT
from ..checkpoint import ConfigMismatchError
from ..distributed import Distributed, full_state
from ..inputs import build_dataset, check_dataset, resolve_model_config
from ..loss import sample_seed
from .base import Method, Role, Update

__all__ = ["K_SLOT", "FewStepDistillation"]

K_SLOT = 1 << 40
"""The ``sample_seed`` slot of an iteration's rolled-out step ``k`` (shared by every sample and rank)."""


class FewStepDistillation(Method):
    """Few-step distillation of a pyramidal WanDiT into the student (see the module docstring).

    :param config: a ``DistillConfig``.
    :param dataset: clean stage pyramids and contexts (default: built from ``config.data``).
    """

    resume_keys = (("distill", "variant"), ("distill", "lora_rank"), ("pyramid", "num_stages"), ("model", "config"))

    def __init__(self, config, dist: Distributed, dataset=None) -> None:
        super().__init__(config, dist)
        d = config.distill
        self.label = f"distill {d.variant}"
        self.pyramid, self.windows = config.pyramid.build()
        self.S = config.pyramid.num_stages
        self._check_card(config.model.path)
        self.plan = Plan.build(d.schedule, self.pyramid, self.windows, d.sample_shift)
        """The student's few-step plan (stages, grids) that every roll-out walks."""
        self.num_evals = self.plan.total_steps
        self.model_config = resolve_model_config(config.model.config, config.model.path)
        self.dataset = (
            dataset
            if dataset is not None
            else build_dataset(config.data, self.pyramid, self.model_config.in_dim, self.model_config.text_dim)
        )
        check_dataset(self.dataset, self.pyramid, self.model_config, config.data)
        lora = (lambda model: student_lora(model, d.lora_rank, d.lora_alpha)) if d.lora_rank > 0 else None
        self.student, self.lora = self.wan(config.model.path, lora=lora)
        self.student.set_gradient_checkpointing(config.train.gradient_checkpointing)
        self.student_fn = BackboneDenoiser(WanBackbone(self.student, rope=config.model.rope))
        self.gen_module: nn.Module = self.student
        self.card_patches: tuple = ()
        self.finetuned_teacher: nn.Module | None = None
        """A teacher finetuned at the start of the run (checkpointed with the run)."""
        self.teacher_losses: list[float] = []

    # ------------------------------------------------------------------------- set-up pieces
    def _check_card(self, path: str) -> None:
        """ConfigMismatchError when ``path``'s pyrflow.json was trained for another stage count than the pyramid's."""
        if path and (Path(path) / CARD_FILE).is_file():
            card = ModelCard.load(path)
            if card.num_stages != self.S:
                raise ConfigMismatchError(
                    f"model.path {path} is a {card.num_stages}-stage checkpoint ({CARD_FILE}); "
                    f"pyramid.num_stages = {self.S} and distill.schedule {self.config.distill.schedule!r} do not fit it"
                )

    def _load(self, path: str, dtype: torch.dtype = torch.float32) -> WanDiT:
        """The WanDiT at ``path`` (see :meth:`~pyrflow_fast.train.methods.base.Method.wan`)."""
        return self.wan(path, dtype=dtype)[0]

    def _copy(self, model: WanDiT, dtype: torch.dtype = torch.float32) -> WanDiT:
        """A hook-free copy of ``model``'s base weights (LoRA hooks are not copied; under FSDP its shards)."""
        return self.wan("", dtype=dtype, copy_from=model)[0]

    def _frozen(self, model: WanDiT) -> WanDiT:
        """``model`` frozen, in eval mode, and under FSDP root-sharded (gathered once outside inference mode)."""
        self.shard_root(model, frozen=True)
        return model.requires_grad_(False).eval()

    def _pyramidal_teacher(self) -> None:
        """The frozen pyramidal teacher ``pyr_teacher`` (samplers' contract, inference mode).

        ``model.teacher_path``, else a copy of the initial student; with LoRA the student's base with the
        adapters off, except under FSDP, where a sharded copy serves (the student is also called with
        gradients, and FSDP cannot gather it for inference mode and for autograd alike). Its weights are
        in :attr:`frozen_dtype`.
        """
        config = self.config
        self.teacher_model: WanDiT | None = None
        if config.model.teacher_path:
            self.teacher_model = self._load(config.model.teacher_path, self.frozen_dtype)
        elif self.lora is None or self.dist.fsdp:
            self.teacher_model = self._copy(self.student, self.frozen_dtype)
        if self.teacher_model is not None:
            self._frozen(self.teacher_model)
            self.pyr_teacher = FrozenDenoiser(BackboneDenoiser(WanBackbone(self.teacher_model, rope=config.model.rope)))
        else:
            self.pyr_teacher = FrozenDenoiser(AdaptersOff(self.lora, self.student_fn))

    def _fake_score(self, model: WanDiT | None = None) -> tuple[WanDiT, BackboneDenoiser]:
        """DMD's fake score: ``model`` (float32) set to train, and its denoiser; ``model=None``: a float32 copy of
        the pyramidal teacher (``model.teacher_path``, else the initial student)."""
        if model is None:
            path = self.config.model.teacher_path
            model = self._load(path) if path else self._copy(self.student)
        model.requires_grad_(True).train().set_gradient_checkpointing(self.config.train.gradient_checkpointing)
        return model, BackboneDenoiser(WanBackbone(model, rope=self.config.model.rope))

    def _dmd_generator_loss(
        self, dmd: DMD, dr: dict[str, Any], step: int, pred: Prediction, process: StageProcess
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DMD's generator loss on the roll-out ``pred``, the scores re-noising with ``process`` and, when
        ``distill.regression_weight > 0``, its regression term towards :meth:`teacher_target`; with the logged
        parts (``dmd``, ``regression``)."""
        dmd.uncond = torch.zeros_like(dr["ctx"])  # CFG's unconditional branch: the all-zero context
        target = self.teacher_target(dr, step, pred.stage) if self.config.distill.regression_weight > 0 else None
        out = dmd.generator_loss(pred.x0, process, dr["ctx"], x_teacher=target, rng=dr["rng"])
        parts = {"dmd": out.dmd}
        if out.regression is not None:
            parts["regression"] = out.regression
        return out.total, parts

    def _shard(self) -> None:
        """Under FSDP, ``fully_shard`` the roots of the trained modules (their blocks are sharded already)."""
        self.shard_root(self.student)

    def _finish(self, critic: nn.Module) -> None:
        """Shard the trained roots (FSDP) and declare the roles: the generator (LoRA adapters and the generator
        module's trained parameters) and ``critic``."""
        config, d = self.config, self.config.distill
        self._shard()
        parts = {"lora": self.lora, "module": self.gen_module} if self.lora is not None else {"module": self.gen_module}
        generator = nn.ModuleDict(parts)
        gen_params = [p for p in generator.parameters() if p.requires_grad]
        critic_params = [p for p in critic.parameters() if p.requires_grad]
        gen_opt = self.adamw(gen_params, config.optim.lr)
        critic_opt = self.adamw(critic_params, d.critic_lr or config.optim.lr)
        steps = config.train.steps
        self.roles = {
            "generator": Role(generator, gen_opt, -(-steps // d.critic_ratio), average=True),
            "critic": Role(critic, critic_opt, steps, average=True),
        }

    # ---------------------------------------------------------------------------- draws
    def _contexts(self, items: list[dict], rng: torch.Generator) -> torch.Tensor:
        width = items[0]["context"].shape[-1]
        length = max(int(it["context_len"]) for it in items)
        ctx = torch.zeros(len(items), length, width)
        drop = torch.rand(len(items), generator=rng) < self.config.data.text_dropout
        for n, it in enumerate(items):
            if not drop[n]:
                m = int(it["context_len"])
                ctx[n, :m] = torch.as_tensor(it["context"][:m], dtype=torch.float32)
        return ctx.to(self.device)

    def _finetune_batch(self, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Batch ``n`` of a teacher finetune: the global batch (``world_size * batch_size``), the same on every rank."""
        rng = torch.Generator().manual_seed(sample_seed(self.config.train.seed, n, 11))
        idx = torch.randint(len(self.dataset), (self.config.train.batch_size * self.dist.world,), generator=rng)
        items = [self.dataset[int(i)] for i in idx]
        x0s = [
            torch.stack([torch.as_tensor(it["x0s"][i], dtype=torch.float32) for it in items]).to(self.device)
            for i in range(self.S)
        ]
        return x0s, self._contexts(items, rng)

    def draws(self, step: int) -> list[dict[str, Any]]:
        """Everything random of iteration ``step``, one dict per local sample: item, context, noise, the
        rolled-out step ``k`` (one per iteration, shared by all samples and ranks) and a generator ``rng``
        for the rest. Sample ``b`` of rank ``r`` is global slot ``j = r * batch_size + b`` and draws from
        ``(seed, step, 4 j)`` only, so any world size with the same global batch sees the same samples."""
        seed, batch = self.config.train.seed, self.config.train.batch_size
        k = int(
            torch.randint(self.num_evals, (), generator=torch.Generator().manual_seed(sample_seed(seed, step, K_SLOT)))
        )
        out = []
        for b in range(batch):
            slot = self.dist.rank * batch + b
            rng = torch.Generator().manual_seed(sample_seed(seed, step, 4 * slot))
            items = [self.dataset[int(torch.randint(len(self.dataset), (), generator=rng))]]
            ctx = self._contexts(items, rng)
            shape = (1, self.model_config.in_dim, *items[0]["x0s"][0].shape[-3:])
            eps0 = torch.randn(shape, generator=rng)
            out.append({"items": items, "ctx": ctx, "eps0": eps0.to(self.device), "k": k, "rng": rng, "slot": slot})
        return out

    def _target_rng(self, dr: dict[str, Any], step: int) -> torch.Generator:
        """The generator of the teacher's multi-step sample for draws ``dr`` of iteration ``step``."""
        return torch.Generator().manual_seed(sample_seed(self.config.train.seed, step, 4 * dr["slot"] + 1))

    # ------------------------------------------------------------------------- roll-outs
    def rollout(self, dr: dict[str, Any], grad: bool) -> Prediction:
        """The generator's ``k``-th clean prediction for iteration draws ``dr``, its stage and process: the
        student's few-step sampler from ``down^top(eps0)`` stopped at evaluation ``k``, that evaluation with
        gradient when ``grad``."""
        noise = clean_pyramid_latent(dr["eps0"], self.pyramid)[self.plan.top]
        return self._few_step(self.student_fn, noise, self.pyramid, dr, grad)

    def _few_step(self, fn, noise: torch.Tensor, pyramid, dr: dict[str, Any], grad: bool) -> Prediction:
        """The student's few-step sampler of every roll-out: ``fn`` from ``noise`` along the plan, stopped at
        evaluation ``k`` of ``dr`` (with gradient when ``grad``)."""
        with torch.set_grad_enabled(grad):
            return sample_few_step(
                fn,
                noise,
                pyramid,
                self.windows,
                self.plan,
                cond=dr["ctx"],
                shift=self.config.distill.sample_shift,
                rng=dr["rng"],
                stop=dr["k"],
            )

    @torch.no_grad()
    def teacher_target(
        self, dr: dict[str, Any], step: int, stage: int, start: Prediction | None = None
    ) -> torch.Tensor:
        """The pyramidal teacher's multi-step sample (pyramidal Euler, CFG) from the iteration's noise,
        brought to ``stage`` by Definition 1; with ``start`` (a roll-out's prediction), the teacher's
        continuation of the student's state ``start.x`` from its noise level instead (the regression
        schedule's levels below it), so the target shares the roll-out's fresh noise."""
        d = self.config.distill
        plan = Plan.build(d.regression_schedule, self.pyramid, self.windows, d.sample_shift)
        model = self.pyr_teacher.fn
        teacher = model if d.guidance == 1.0 else guided(model, d.guidance, torch.zeros_like(dr["ctx"]))
        noise = clean_pyramid_latent(dr["eps0"], self.pyramid)[plan.top] if start is None else start.x
        x = sample_euler(
            teacher,
            noise,
            self.pyramid,
            self.windows,
            plan,
            cond=dr["ctx"],
            shift=d.sample_shift,
            rng=self._target_rng(dr, step),
            start=None if start is None else (start.stage, start.sigma),
        )
        return clean_pyramid_latent(x, self.pyramid)[stage]

    # -------------------------------------------------------------------------- training
    @abc.abstractmethod
    def critic_loss(self, dr: dict[str, Any], x0: torch.Tensor, stage: int, process: StageProcess) -> torch.Tensor:
        """The critic's loss on the detached roll-out ``x0`` of draws ``dr``."""

    @abc.abstractmethod
    def generator_loss(
        self, dr: dict[str, Any], step: int, pred: Prediction
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's loss on the roll-out ``pred`` (its ``x0`` with gradient) and its logged parts."""

    def _global_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average per-rank metric values over the ranks (every rank has the same number of samples)."""
        if self.dist.world == 1 or not values:
            return values
        t = self.dist.all_sum(torch.tensor(list(values.values()), dtype=torch.float64))
        return {k: float(v) / self.dist.world for k, v in zip(values, t.tolist())}

    def train_step(self, step: int, update: Update) -> dict[str, Any]:
        """One iteration: a critic update and, every ``critic_ratio``-th, a generator update.

        The local samples run one at a time (each with its own generators, see :meth:`draws`), their losses
        divided by the batch size and their gradients accumulated; the logged losses are global batch means.
        """
        drs = self.draws(step)
        nb = len(drs)
        metrics: dict[str, Any] = {"step": step + 1, "k": drs[0]["k"]}
        sums = {"critic_loss": 0.0}
        for dr in drs:
            with self.autocast():
                x0, stage, process, _, _ = self.rollout(dr, grad=False)
                loss = self.critic_loss(dr, x0.detach(), stage, process)
            (loss / nb).backward()
            sums["critic_loss"] += float(loss.detach()) / nb
        metrics["stage"] = stage
        _, metrics["critic_grad_norm"] = update("critic")
        if step % self.config.distill.critic_ratio == 0:
            sums["generator_loss"] = 0.0
            for dr in drs:
                with self.autocast():
                    pred = self.rollout(dr, grad=True)
                    loss, parts = self.generator_loss(dr, step, pred)
                    stage = pred.stage
                (loss / nb).backward()
                sums["generator_loss"] += float(loss.detach()) / nb
                for name, v in parts.items():
                    sums[name] = sums.get(name, 0.0) + float(v.detach()) / nb
            metrics["lr"], metrics["grad_norm"] = update("generator")
        metrics.update(self._global_mean(sums))
        return metrics

    # ----------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.finetuned_teacher is None:
            return {}
        return {"teacher": {k: v.detach().cpu().clone() for k, v in self.finetuned_teacher.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "teacher" in state:
            self.finetuned_teacher.load_state_dict(state["teacher"])

    # ---------------------------------------------------------------------------- export
    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's WanDiT weights (LoRA merged) on rank 0, which writes the export; ``{}`` on the other
        ranks (a collective under FSDP: they take part in the gathers and keep nothing)."""
        keep = self.rank == 0
        base = full_state(self.student.state_dict().items(), keep)
        adapters = full_state(self.lora.state_dict().items(), keep) if self.lora is not None else {}
        if self.lora is None or not keep:
            return base
        return self.lora.merged_state_dict(base, 0, adapters)

    def card(self) -> ModelCard:
        """The card of the distilled student (kind ``distilled``, its few-step schedule, PPF's patches)."""
        config = self.config
        return ModelCard(
            kind="distilled",
            num_stages=self.S,
            boundaries=tuple(config.pyramid.boundaries),
            resampler=config.pyramid.resampler,
            factors=tuple(config.pyramid.factors),
            rope=config.model.rope,
            schedule=config.distill.schedule,
            # the student learned its few steps on this grid
            shift=config.distill.sample_shift,
            ppf_patches=self.card_patches,
        )

    def sampling(self) -> dict[str, Any]:
        """The student with its LoRA (a PPF student: its PPFWan as ``ppf``, its adapters acting through their hooks)."""
        if self.card_patches:
            return {"transformer": self.student, "card": self.card(), "ppf": self.gen_module}
        return {"transformer": self.student, "lora": self.lora, "card": self.card()}

    def export(self, folder: Path, ema: dict[str, dict[str, torch.Tensor]]) -> None:
        """The distilled transformer and ``pyrflow.json`` (kind ``distilled``, the student's schedule)."""
        config = self.config
        card = self.card()
        sd = self.student_state_dict()
        if self.rank == 0:
            ck = config.checkpoint
            write_model_dir(
                folder,
                sd,
                card,
                self.model_config,
                config.model.path,
                ck.export_layout,
                ck.link_components,
                max_shard_size=ck.export_max_shard_size or None,
            )
