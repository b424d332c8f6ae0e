r"""The distillation loop: :class:`Distiller` (DMD OT / PT / PT*, adversarial OD / PD, PPF).

One **iteration** (``train.steps`` of them) draws, from generators seeded by ``(seed, iteration,
global sample slot)`` (so the world size does not change the samples; :meth:`Distiller.draws`), a batch of prompts (contexts of dataset items; with ``data.text_dropout`` some are all-zero),
full-resolution white noise :math:`\epsilon_0` and a step :math:`k` of the student's schedule.
The student's initial noise is :math:`\mathrm{down}^{top}(\epsilon_0)` (orthonormal resampling
keeps it white). The **generator rollout** (:func:`rollout`, backward simulation) runs the
student's few-step sampler (x0 prediction, re-noise inside a stage, up + re-noise across stages,
no CFG, exactly :func:`pyrflow_fast.samplers.sample_few_step`) without gradient up to step
:math:`k` and returns the :math:`k`-th clean prediction :math:`\hat x_0` of stage :math:`i`
(with gradient on generator iterations).

Every iteration updates the **critic** once on the detached :math:`\hat x_0`; every
``critic_ratio``-th (iterations 0, r, 2r, ...) also updates the **generator**:

- ``dmd-*``: the critic is the fake score (flow matching on re-noised generator samples,
  :meth:`pyrflow_fast.distill.dmd.DMD.critic_loss`), the generator loss is
  :meth:`~pyrflow_fast.distill.dmd.DMD.generator_loss` with the guided real score (run in
  ``torch.inference_mode``) and the regression term towards the teacher's multi-step sample from
  the same noise, brought to stage :math:`i` by Definition 1 (:math:`\mathrm{down}^i`).
  ``dmd-ot`` re-noises with the plain process at stage :math:`i`'s resolution and first finetunes
  the original teacher briefly with flow matching at every stage resolution
  (:func:`multires_finetune`); ``dmd-pt`` / ``dmd-pt*`` use the pyramidal teacher and process.
- ``adv-*``: the critic is the discriminator head on frozen features of the original Wan (OD)
  or the pyramidal teacher (PD); real samples are dataset stage signals, fake ones the
  student's :math:`\hat x_0`, both re-noised with the stage's pyramidal process at one score
  level; hinge loss for the head, ``adv_weight * adversarial + rec_weight * reconstruction`` for
  the generator (reconstruction target: the teacher's multi-step sample as above).

- ``ppf``: pyramidal patchification (:mod:`pyrflow_fast.ppf`). A :class:`~pyrflow_fast.ppf.PPFWan`
  built on the teacher is first finetuned by flow matching with levels as stages
  (:func:`ppf_finetune`: the plain process on the full-resolution latent, each level on its
  window); the student is a PPFWan starting from it, rolled out with PPF's few-step sampler
  (:func:`ppf_rollout`), and DMD runs with the plain process (no resampling), the finetuned PPF
  model as real score and a copy of it as critic (:class:`~pyrflow_fast.ppf.PPFModel` picks the
  level from the noise level). The export adds the per-level layers (``ppf_levels.safetensors``)
  and ``ppf_patches`` to the card; :func:`pyrflow_fast.sample.load_ppf` loads them.

With ``distill.lora_rank > 0`` only LoRA adapters of the student are trained (and, when the
pyramidal teacher is the initial model, the teacher is the student's base with the adapters off).
The ``[optim]`` schedule (warm-up, decay) counts updates of each optimizer: iterations for the
critic, generator updates for the generator. Checkpoints reuse the trainer's atomic scheme; the export is a model directory with a
``ModelCard(kind="distilled", schedule=...)`` that :func:`pyrflow_fast.sample.generate` samples
with the few-step sampler.

>>> from pyrflow_ref.windows import StageWindows
>>> from pyrflow_fast.resample import Pyramid
>>> count_steps("2-2-1", Pyramid.uniform("haar", (2, 2, 2), 3), StageWindows((5 / 9, 15 / 17)))
5
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pyrflow_ref.samplers import plan_schedule
from pyrflow_ref.windows import StageWindows, parse_schedule, step_grid

from ..contract import WanBackbone
from ..process import clean_pyramid_latent, pyramidal_x, rho, x0_from_velocity, y_c, y_n
from ..resample import Pyramid
from ..samplers import cfg as cfg_guidance
from ..samplers import model_velocity, sample_euler, sample_plain
from ..train.loss import sample_seed
from ..train.trainer import (
    _atomic_write_text,
    _full,
    build_dataset,
    check_item,
    latest_checkpoint,
    load_backbone,
    resolve_model_config,
    trim_metrics,
    write_model_dir,
)
from ..wan import WanDiT
from . import adversarial
from .config import DistillConfig
from .dmd import DMD, DMDConfig, StageProcess, critic_loss
from .lora import AdaptersOff, student_lora

K_SLOT = 1 << 40
"""The ``sample_seed`` slot of an iteration's rolled-out step ``k`` (shared by every sample and rank)."""

__all__ = [
    "Distiller",
    "InferenceModel",
    "count_steps",
    "multires_finetune",
    "ppf_finetune",
    "ppf_rollout",
    "rollout",
    "velocity_model",
]


def velocity_model(backbone: nn.Module, full_size=None) -> Callable:
    """The samplers' model contract ``(x_nat, t, cond) -> v_hat`` over a ``WanBackbone``-like module."""

    def run(x_nat, t, cond):
        return backbone(x_nat, t, cond, full_size=full_size)

    return run


class InferenceModel:
    """Run a model in ``torch.inference_mode`` (the frozen real score: no autograd records, no saved
    activations) and return an ordinary tensor."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> torch.Tensor:
        with torch.inference_mode():
            out = self.fn(*args)
        return out.clone()


def count_steps(schedule, pyramid: Pyramid, windows: StageWindows) -> int:
    """Model evaluations of a few-step schedule."""
    steps, _, _ = plan_schedule(pyramid, windows, schedule)
    return sum(steps)


def rollout(
    model: Callable,
    noise: torch.Tensor,
    pyramid: Pyramid,
    windows: StageWindows,
    schedule,
    stop: int,
    *,
    cond: Any = None,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    grad: bool = True,
) -> tuple[torch.Tensor, int, StageProcess]:
    r"""Backward simulation: the student's few-step sampler up to evaluation ``stop`` (from 0).

    Evaluations ``0 .. stop - 1`` run without gradient and re-noise exactly as
    :func:`pyrflow_fast.samplers.sample_few_step` (noise from ``generator``); evaluation ``stop``
    returns ``(x0_hat, stage, process)``: the clean prediction (with gradient when ``grad``), its
    stage and the stage's pyramidal :class:`~pyrflow_fast.distill.dmd.StageProcess` (effective
    windows of the schedule). With ``stop`` the last evaluation, ``x0_hat`` is the sampler's output.
    """
    steps, eff, top = plan_schedule(pyramid, windows, schedule)
    if not 0 <= stop < sum(steps):
        raise ValueError(f"stop {stop} outside the {sum(steps)} evaluations of schedule {steps}")
    x = noise
    count = 0
    for i in range(top, -1, -1):
        n = steps[pyramid.num_stages - 1 - i]
        sc, sn = eff.sigma_c(i), eff.sigma_n(i)
        grid = step_grid(sn, sc, n, shift)
        g = pyramid.gain(i, x.shape[-3])
        project = pyramid.levels[i].project if i < top else None
        for k in range(n):
            s = float(grid[k])
            if count == stop:
                process = StageProcess(sc, sn, g, project)
                with torch.set_grad_enabled(grad):
                    return process.denoise(model, x, s, cond), i, process
            with torch.no_grad():
                v = model_velocity(model, x, s, g, cond)
                x0 = x0_from_velocity(x, v, s, sc, sn, project)
                if k + 1 < n:
                    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                    coarse = project(x0) if project is not None else torch.zeros_like(x0)
                    x = pyramidal_x(y_c(x0, eps, sc), y_n(coarse, eps, sn), rho(float(grid[k + 1]), sc, sn))
                else:
                    level = pyramid.levels[i - 1]
                    fine = level.fine_shape(tuple(x.shape))
                    x = y_n(
                        level.up(x0, fine), torch.randn(fine, generator=generator, dtype=x.dtype, device=x.device), sc
                    )
            count += 1
    raise AssertionError("unreachable")


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
) -> list[float]:
    r"""Brief multi-resolution flow-matching finetune of a plain (original) teacher, in place.

    Step ``n`` takes ``batches(n) = (x0s, context)``, clean stage signals finest first and
    contexts, and trains every stage ``i`` with the **plain** process at its resolution
    :math:`x = (1 - \sigma) x_0^{(i)} + \sigma \epsilon` (:meth:`StageProcess.plain` with the
    stage's gain, i.e. Wan's own process on the natural latent), :math:`\sigma \sim U(0, 1)`:
    the process ``dmd-ot`` re-noises with. Returns the per-step losses.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    fn = velocity_model(WanBackbone(model, rope=rope))
    losses = []
    for n in range(steps):
        gen = torch.Generator().manual_seed(sample_seed(seed, n, 7))
        x0s, ctx = batches(n)
        total = 0.0
        for i in range(pyramid.num_stages):
            x0 = x0s[i]
            process = StageProcess.plain(pyramid.gain(i, x0.shape[-3]))
            sigma = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
            eps = torch.randn(x0.shape, generator=gen)
            x = process.noise(x0, eps, sigma)
            loss = critic_loss(process.velocity(fn, x, sigma, ctx), process.target(x0, eps)) / pyramid.num_stages
            loss.backward()
            total += float(loss.detach())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def ppf_rollout(
    ppf: nn.Module,
    noise: torch.Tensor,
    windows: StageWindows,
    schedule,
    stop: int,
    *,
    cond: Any = None,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    grad: bool = True,
) -> tuple[torch.Tensor, int, StageProcess]:
    r"""Backward simulation for a :class:`~pyrflow_fast.ppf.PPFWan`: :func:`pyrflow_fast.ppf.sample_ppf`'s
    few-step sampler (no CFG) up to evaluation ``stop``; returns ``(x0_hat, level, plain process)``.
    """
    steps = parse_schedule(schedule, ppf.num_levels) if isinstance(schedule, str) else tuple(int(n) for n in schedule)
    if not 0 <= stop < sum(steps):
        raise ValueError(f"stop {stop} outside the {sum(steps)} evaluations of schedule {steps}")
    eff = windows.for_schedule(steps)
    x = noise
    count = 0
    for level in range(eff.num_stages - 1, -1, -1):
        n = steps[ppf.num_levels - 1 - level]
        grid = step_grid(eff.sigma_n(level), eff.sigma_c(level), n, shift)
        for k in range(n):
            s, s_next = float(grid[k]), float(grid[k + 1])
            t = torch.full((x.shape[0],), 1000.0 * s, device=x.device)
            if count == stop:
                with torch.set_grad_enabled(grad):
                    return x - s * ppf(x, t, cond, level=level).to(x.dtype), level, StageProcess.plain(1.0)
            with torch.no_grad():
                x0 = x - s * ppf(x, t, cond, level=level).to(x.dtype)
                if s_next > 0.0:
                    x = (1 - s_next) * x0 + s_next * torch.randn(
                        x.shape, generator=generator, dtype=x.dtype, device=x.device
                    )
                else:
                    x = x0
            count += 1
    raise AssertionError("unreachable")


def ppf_finetune(
    ppf: nn.Module,
    batches: Callable[[int], tuple[list[torch.Tensor], torch.Tensor]],
    windows: StageWindows,
    steps: int,
    lr: float,
    *,
    seed: int = 0,
    grad_clip: float = 1.0,
) -> list[float]:
    r"""Diffusion (flow-matching) finetune of a :class:`~pyrflow_fast.ppf.PPFWan`, in place: levels as stages.

    Step ``n`` takes ``batches(n) = (x0s, context)`` and trains every level ``l`` on the
    full-resolution ``x0s[0]`` with the plain process :math:`x = (1 - \sigma) x_0 + \sigma\epsilon`,
    :math:`\sigma \sim U(\text{window } l)` of ``windows``, target :math:`\epsilon - x_0` (Wan's
    loss at gain 1). Returns the per-step losses.
    """
    params = [p for p in ppf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    levels = ppf.num_levels
    losses = []
    for n in range(steps):
        gen = torch.Generator().manual_seed(sample_seed(seed, n, 13))
        x0s, ctx = batches(n)
        x0 = x0s[0]
        total = 0.0
        for level in range(levels):
            lo, hi = windows.sigma_c(level), windows.sigma_n(level)
            sigma = (lo + (hi - lo) * torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)).to(x0.device)
            eps = torch.randn(x0.shape, generator=gen).to(x0)
            s = sigma.to(x0.dtype).reshape(-1, 1, 1, 1, 1)
            v = ppf((1 - s) * x0 + s * eps, 1000.0 * sigma.float(), ctx, level=level)
            loss = critic_loss(v, eps - x0) / levels
            loss.backward()
            total += float(loss.detach())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def _lr_lambda(cfg: DistillConfig, total: int) -> Callable[[int], float]:
    """Warm-up and decay of ``cfg.optim`` over ``total`` updates of one optimizer."""
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps > 0 and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            span = max(total - o.warmup_steps, 1)
            p = min(max(step - o.warmup_steps, 0) / span, 1.0)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        return 1.0

    return f


class Distiller:
    """Few-step distillation of a pyramidal WanDiT (see the module docstring).

    :param cfg: the configuration.
    :param dataset: clean stage pyramids and contexts (default: ``build_dataset`` of ``cfg.data``).
    """

    def __init__(self, cfg: DistillConfig, dataset=None) -> None:
        self.cfg = cfg
        d, tc = cfg.distill, cfg.train
        self.variant = d.variant
        self._init_distributed()
        use_cuda = tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        torch.manual_seed(tc.seed)
        self.pyramid = Pyramid.uniform(
            cfg.pyramid.resampler, tuple(cfg.pyramid.factors), cfg.pyramid.num_stages, first_frame=True
        )
        self.windows = StageWindows(cfg.pyramid.boundaries)
        self.S = cfg.pyramid.num_stages
        self.schedule = parse_schedule(d.schedule, self.S)
        self._check_card(cfg.model.path)
        self.num_evals = count_steps(self.schedule, self.pyramid, self.windows)
        self.model_cfg = resolve_model_config(cfg)
        self.dataset = (
            dataset
            if dataset is not None
            else build_dataset(cfg, self.pyramid, self.model_cfg.in_dim, self.model_cfg.text_dim)
        )
        if len(self.dataset) < 1:
            raise ValueError("the dataset is empty")
        check_item(self.dataset[0], self.pyramid, self.model_cfg, f"dataset ({cfg.data.kind})")
        ckpt = tc.gradient_checkpointing

        # ---- student
        self.student = load_backbone(cfg).to(self.device).float()
        self.student.set_gradient_checkpointing(ckpt)
        self.lora = student_lora(self.student, d.lora_rank, d.lora_alpha).to(self.device) if d.lora_rank > 0 else None
        self.student_fn = velocity_model(WanBackbone(self.student, rope=cfg.model.rope))

        # ---- teachers
        self.teacher_model: WanDiT | None = None  # a separate frozen pyramidal teacher, when there is one
        if cfg.model.teacher_path:
            self.teacher_model = self._load(cfg.model.teacher_path)
        elif self.lora is None and self.variant != "ppf":
            self.teacher_model = copy.deepcopy(self.student)
        elif tc.parallel == "fsdp" and self.variant not in (
            "ppf",
            "dmd-ot",
        ):  # a plain replicated teacher, not the sharded student's base
            # global RNG use as in an unsharded run (whose adv-pd copies the base for the discriminator's backbone)
            with contextlib.nullcontext() if self.variant == "adv-pd" else torch.random.fork_rng(devices=[]):
                self.teacher_model = self._load_state_copy(self.student)
        if self.teacher_model is not None:
            self.teacher_model.requires_grad_(False).eval()
            pyr_teacher = velocity_model(WanBackbone(self.teacher_model, rope=cfg.model.rope))
        else:
            pyr_teacher = AdaptersOff(self.lora, self.student_fn)
        self.pyr_teacher = InferenceModel(pyr_teacher)

        self.original: WanDiT | None = None
        if self.variant in ("dmd-ot", "adv-od"):
            self.original = self._load(cfg.model.original_path or cfg.model.path)
        self.teacher_losses: list[float] = []
        if self.variant == "dmd-ot" and d.teacher_finetune_steps > 0:
            self.original.requires_grad_(True).train()
            self.teacher_losses = multires_finetune(
                self.original,
                self._finetune_batch,
                self.pyramid,
                d.teacher_finetune_steps,
                d.teacher_finetune_lr,
                seed=tc.seed,
                rope=cfg.model.rope,
                grad_clip=cfg.optim.grad_clip,
            )
            self._broadcast(self.original)
        if self.original is not None:
            self.original.requires_grad_(False).eval()

        # ---- PPF: finetuned PPF teacher, PPF student starting from it
        self.ppf_teacher = self.ppf_student = None
        self.gen_module: nn.Module = self.student
        if self.variant == "ppf":
            from ..ppf import PPFWan

            patches = tuple(tuple(int(v) for v in p) for p in d.ppf_patches)
            base = self._load(cfg.model.teacher_path or cfg.model.path)
            base.set_gradient_checkpointing(ckpt)
            self.ppf_teacher = PPFWan(base, patches).to(self.device)
            if d.teacher_finetune_steps > 0:
                self.teacher_losses = ppf_finetune(
                    self.ppf_teacher,
                    self._finetune_batch,
                    self.windows,
                    d.teacher_finetune_steps,
                    d.teacher_finetune_lr,
                    seed=tc.seed,
                    grad_clip=cfg.optim.grad_clip,
                )
                self._broadcast(self.ppf_teacher)
            self.ppf_teacher.requires_grad_(False).eval()
            self.ppf_student = PPFWan(self.student, patches).to(
                self.device
            )  # per-level layers trainable (also with LoRA)
            self.ppf_student.load_state_dict(self.ppf_teacher.state_dict())
            self.gen_module = self.ppf_student

        # ---- critic
        self.dmd: DMD | None = None
        self.disc: adversarial.Discriminator | None = None
        if self.variant == "ppf":
            from ..ppf import PPFModel

            self.critic_model = copy.deepcopy(self.ppf_teacher).requires_grad_(True).train()
            self.critic_fn = PPFModel(self.critic_model, self.windows)
            self.real_fn = InferenceModel(PPFModel(self.ppf_teacher, self.windows))
        elif self.variant.startswith("dmd"):
            source = self.original if self.variant == "dmd-ot" else (self.teacher_model or self.student)
            # a state copy of the student's base: a deep copy would carry the adapter hooks
            self.critic_model = self._load_state_copy(source) if source is self.student else copy.deepcopy(source)
            self.critic_model.requires_grad_(True).train().set_gradient_checkpointing(ckpt)
            self.real_fn = self.pyr_teacher
            if self.variant == "dmd-ot":
                self.real_fn = InferenceModel(velocity_model(WanBackbone(self.original, rope=cfg.model.rope)))
            self.critic_fn = velocity_model(WanBackbone(self.critic_model, rope=cfg.model.rope))
        if self.variant.startswith("dmd") or self.variant == "ppf":
            dmd_cfg = DMDConfig(
                variant="ot" if self.variant == "ppf" else self.variant[len("dmd-") :],
                guidance=d.guidance,
                shift=d.score_shift,
                sigma_min=d.sigma_min,
                sigma_max=d.sigma_max,
                critic_ratio=d.critic_ratio,
                regression_weight=d.regression_weight,
                band_norm=d.band_norm,
            )
            self.dmd = DMD(self.real_fn, self.critic_fn, dmd_cfg, uncond=None)
            self.critic_params = [p for p in self.critic_model.parameters() if p.requires_grad]
        else:
            if self.variant == "adv-od":
                backbone = self.original
            else:
                backbone = self.teacher_model if self.teacher_model is not None else self._load_state_copy(self.student)
            backbone.set_gradient_checkpointing(ckpt)
            n = len(backbone.blocks)
            blocks = list(d.feature_blocks) or sorted({n // 2, n - 1})
            self.disc = adversarial.Discriminator(backbone, blocks, d.disc_hidden).to(self.device)
            self.critic_params = list(self.disc.head.parameters())

        if tc.parallel == "fsdp":
            self._shard()
            self.critic_params = (
                [p for p in self.critic_model.parameters() if p.requires_grad]
                if self.dmd is not None
                else list(self.disc.head.parameters())
            )
        self.gen_params = (list(self.lora.parameters()) if self.lora is not None else []) + [
            p for p in self.gen_module.parameters() if p.requires_grad
        ]
        o = cfg.optim
        kw = dict(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.gen_opt = torch.optim.AdamW(self.gen_params, lr=o.lr, **kw)
        self.critic_opt = torch.optim.AdamW(self.critic_params, lr=d.critic_lr or o.lr, **kw)
        gen_updates = -(-tc.steps // d.critic_ratio)
        self.gen_sched = torch.optim.lr_scheduler.LambdaLR(self.gen_opt, _lr_lambda(cfg, gen_updates))
        self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, _lr_lambda(cfg, tc.steps))
        self.step = 0
        self.out = Path(tc.output_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._barrier()

    # ------------------------------------------------------------------------- set-up pieces
    def _init_distributed(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.cfg.train.parallel == "none":
            if world > 1:
                raise ValueError(
                    f"train.parallel = 'none' but WORLD_SIZE = {world}; set train.parallel = 'ddp' or 'fsdp'"
                )
            self.rank, self.world, self.local_rank = 0, 1, 0
            return
        if not dist.is_initialized():
            cuda = torch.cuda.is_available() and self.cfg.train.device != "cpu"
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def fsdp(self) -> bool:
        return self.cfg.train.parallel == "fsdp"

    def _shard(self) -> None:
        """FSDP2 ``fully_shard`` of the trained modules (student / PPF student, critic or discriminator head);
        the frozen teachers stay plain replicated modules. LoRA adapters (a separate module) stay replicated and
        their gradients are averaged by hand."""
        from torch.distributed.fsdp import fully_shard

        if self.ppf_student is not None:
            # PPFWan runs the wrapped model's pieces and only the current level's layers: shard the transformer
            # blocks (used at every level, the bulk of the weights); the rest stays replicated, averaged by hand
            for block in list(self.student.blocks) + list(self.critic_model.model.blocks):
                fully_shard(block)
            return
        if self.lora is None:
            for block in self.student.blocks:
                fully_shard(block)
        fully_shard(self.student)
        if self.dmd is not None:
            for block in self.critic_model.blocks:
                fully_shard(block)
            fully_shard(self.critic_model)
        else:
            fully_shard(self.disc.head)

    def _broadcast(self, module: nn.Module) -> None:
        """Make every rank hold rank 0's parameters and buffers of ``module``."""
        if self.world > 1:
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, src=0)

    def _average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce the gradients over the ranks (a missing gradient counts as zero)."""
        if self.world > 1:
            for p in params:
                if hasattr(p, "device_mesh"):  # FSDP: reduce-scattered (averaged) in the backward pass
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def close(self) -> None:
        """Tear down the process group this distiller created."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _check_card(self, path: str) -> None:
        """ValueError when ``path``'s pyrflow.json was trained for another stage count than the pyramid's."""
        from ..sample import CARD_FILE, ModelCard

        if path and (Path(path) / CARD_FILE).is_file():
            card = ModelCard.load(path)
            if card.num_stages != self.S:
                raise ValueError(
                    f"model.path {path} is a {card.num_stages}-stage checkpoint ({CARD_FILE}); pyramid.num_stages = {self.S} "
                    f"and distill.schedule {self.cfg.distill.schedule!r} do not fit it"
                )

    def _load(self, path: str) -> WanDiT:
        c = copy.deepcopy(self.cfg)
        c.model.path = path
        return load_backbone(c).to(self.device).float()

    def _load_state_copy(self, model: WanDiT) -> WanDiT:
        """A hook-free copy of ``model``'s base weights (LoRA hooks are not copied)."""
        clone = WanDiT(self.model_cfg).to(self.device)
        clone.load_state_dict(model.state_dict())
        return clone

    def _contexts(self, items: list[dict], gen: torch.Generator) -> torch.Tensor:
        width = items[0]["context"].shape[-1]
        length = max(int(it["context_len"]) for it in items)
        ctx = torch.zeros(len(items), length, width)
        drop = torch.rand(len(items), generator=gen) < self.cfg.data.text_dropout
        for n, it in enumerate(items):
            if not drop[n]:
                m = int(it["context_len"])
                ctx[n, :m] = torch.as_tensor(it["context"][:m], dtype=torch.float32)
        return ctx.to(self.device)

    def _items(self, gen: torch.Generator) -> list[dict]:
        """A teacher-finetune batch: the global batch (``world_size * batch_size``), the same on every rank."""
        idx = torch.randint(len(self.dataset), (self.cfg.train.batch_size * self.world,), generator=gen)
        return [self.dataset[int(i)] for i in idx]

    def _finetune_batch(self, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, n, 11))
        items = self._items(gen)
        x0s = [
            torch.stack([torch.as_tensor(it["x0s"][i], dtype=torch.float32) for it in items]).to(self.device)
            for i in range(self.S)
        ]
        return x0s, self._contexts(items, gen)

    # ---------------------------------------------------------------------------- draws
    def draws(self, step: int) -> list[dict[str, Any]]:
        """Everything random of iteration ``step``, one dict per local sample: item, context, noise, the
        rolled-out step ``k`` (one per iteration, shared by all samples and ranks) and a generator for the rest.
        Sample ``b`` of rank ``r`` is global slot ``j = r * batch_size + b`` and draws from ``(seed, step, 4 j)``
        only, so any world size with the same global batch sees the same samples."""
        seed, batch = self.cfg.train.seed, self.cfg.train.batch_size
        k = int(
            torch.randint(self.num_evals, (), generator=torch.Generator().manual_seed(sample_seed(seed, step, K_SLOT)))
        )
        out = []
        for b in range(batch):
            slot = self.rank * batch + b
            gen = torch.Generator().manual_seed(sample_seed(seed, step, 4 * slot))
            items = [self.dataset[int(torch.randint(len(self.dataset), (), generator=gen))]]
            ctx = self._contexts(items, gen)
            shape = (1, self.model_cfg.in_dim, *items[0]["x0s"][0].shape[-3:])
            eps0 = torch.randn(shape, generator=gen)
            out.append({"items": items, "ctx": ctx, "eps0": eps0.to(self.device), "k": k, "gen": gen, "slot": slot})
        return out

    def initial_noise(self, eps0: torch.Tensor) -> torch.Tensor:
        """The student's noise at its top stage: ``down^top(eps0)``."""
        _, _, top = plan_schedule(self.pyramid, self.windows, self.schedule)
        return clean_pyramid_latent(eps0, self.pyramid)[top]

    def rollout(self, dr: dict[str, Any], grad: bool) -> tuple[torch.Tensor, int, StageProcess]:
        """The generator's ``k``-th clean prediction for iteration draws ``dr``."""
        if self.ppf_student is not None:
            return ppf_rollout(
                self.ppf_student,
                dr["eps0"],
                self.windows,
                self.schedule,
                dr["k"],
                cond=dr["ctx"],
                shift=self.cfg.distill.sample_shift,
                generator=dr["gen"],
                grad=grad,
            )
        return rollout(
            self.student_fn,
            self.initial_noise(dr["eps0"]),
            self.pyramid,
            self.windows,
            self.schedule,
            dr["k"],
            cond=dr["ctx"],
            shift=self.cfg.distill.sample_shift,
            generator=dr["gen"],
            grad=grad,
        )

    @torch.no_grad()
    def teacher_target(self, dr: dict[str, Any], stage: int) -> torch.Tensor:
        """The teacher's multi-step sample from the iteration's noise, at ``stage`` (Definition 1; PPF: full resolution)."""
        d = self.cfg.distill
        steps = parse_schedule(d.regression_schedule, self.S)
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, self.step, 4 * dr["slot"] + 1))
        uncond = torch.zeros_like(dr["ctx"])
        if self.ppf_teacher is not None:  # PPF: no resampling, the full-resolution sample at every level
            from ..ppf import sample_ppf

            return sample_ppf(
                self.ppf_teacher,
                dr["eps0"],
                dr["ctx"],
                self.windows,
                steps,
                shift=d.sample_shift,
                guidance=d.guidance,
                uncond=uncond,
                generator=gen,
            )
        if self.variant == "dmd-ot":
            model = self.dmd.real.fn if isinstance(self.dmd.real, InferenceModel) else self.dmd.real
            guided = model if d.guidance == 1.0 else cfg_guidance(model, d.guidance, uncond)
            x = sample_plain(guided, dr["eps0"], sum(steps), cond=dr["ctx"], shift=d.sample_shift)
        else:
            model = self.pyr_teacher.fn
            guided = model if d.guidance == 1.0 else cfg_guidance(model, d.guidance, uncond)
            _, _, top = plan_schedule(self.pyramid, self.windows, steps)
            noise = clean_pyramid_latent(dr["eps0"], self.pyramid)[top]
            x = sample_euler(
                guided, noise, self.pyramid, self.windows, steps, cond=dr["ctx"], shift=d.sample_shift, rng=gen
            )
        return clean_pyramid_latent(x, self.pyramid)[stage]

    # -------------------------------------------------------------------------- training
    def _score_process(self, process: StageProcess) -> StageProcess:
        """The DMD variant's process at the rolled-out stage (OT: plain with the stage's gain)."""
        return StageProcess.plain(process.gain) if self.variant == "dmd-ot" else process

    def _clip_step(self, params, opt, sched) -> float:
        self._average_gradients(params)
        clip = self.cfg.optim.grad_clip
        if self.fsdp:  # sharded DTensors and replicated adapters: the global norm by hand
            sq = torch.zeros((), dtype=torch.float64)
            local = torch.zeros((), dtype=torch.float64)
            for p in params:
                if p.grad is None:
                    continue
                if hasattr(p.grad, "to_local"):
                    local += p.grad.to_local().double().pow(2).sum().cpu()
                else:
                    sq += p.grad.double().pow(2).sum().cpu()
            dist.all_reduce(local)
            norm = (sq + local).sqrt()
            if clip > 0:
                coef = min(clip / (float(norm) + 1e-6), 1.0)
                if coef < 1.0:
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(coef)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    def _adv_inputs(self, x0: torch.Tensor, process: StageProcess, dr: dict[str, Any]):
        """Natural-scale re-noised input (and score levels) for the discriminator."""
        sigma = self.dmd_sigmas(process, x0.shape[0], dr["gen"])
        eps = torch.randn(x0.shape, generator=dr["gen"]).to(x0)
        return process.natural_input(process.noise(x0, eps, sigma), sigma)

    def dmd_sigmas(self, process: StageProcess, batch: int, gen: torch.Generator) -> torch.Tensor:
        from .dmd import score_sigmas

        d = self.cfg.distill
        return score_sigmas(
            batch,
            shift=d.score_shift,
            window=(process.sigma_c, process.sigma_n),
            clamp=(d.sigma_min, d.sigma_max),
            generator=gen,
        )

    def _global_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average per-rank metric values over the ranks (every rank has the same number of samples)."""
        if self.world == 1 or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(values, t.tolist())}

    def train_step(self) -> dict[str, Any]:
        """One iteration: a critic update and, every ``critic_ratio``-th, a generator update.

        The local samples run one at a time (each with its own generators, see :meth:`draws`), their losses
        divided by the batch size and their gradients accumulated; the logged losses are global batch means.
        """
        d = self.cfg.distill
        drs = self.draws(self.step)
        nb = len(drs)
        is_gen = self.step % d.critic_ratio == 0
        metrics: dict[str, Any] = {"step": self.step + 1, "k": drs[0]["k"]}
        # ---- critic
        sums = {"critic_loss": 0.0}
        for dr in drs:
            x0, stage, process = self.rollout(dr, grad=False)
            if self.dmd is not None:
                loss = self.dmd.critic_loss(x0.detach(), self._score_process(process), dr["ctx"], generator=dr["gen"])
            else:
                real = torch.stack([torch.as_tensor(it["x0s"][stage], dtype=torch.float32) for it in dr["items"]]).to(
                    self.device
                )
                with torch.no_grad():
                    xr, tr = self._adv_inputs(real, process, dr)
                    xf, tf = self._adv_inputs(x0.detach(), process, dr)
                loss = adversarial.hinge_loss(self.disc(xr, tr, dr["ctx"]), self.disc(xf, tf, dr["ctx"]))
            (loss / nb).backward()
            sums["critic_loss"] += float(loss.detach()) / nb
        metrics["stage"] = stage
        metrics["critic_grad_norm"] = self._clip_step(self.critic_params, self.critic_opt, self.critic_sched)
        # ---- generator
        if is_gen:
            sums["generator_loss"] = 0.0
            for dr in drs:
                x0, stage, process = self.rollout(dr, grad=True)
                parts: dict[str, torch.Tensor] = {}
                if self.dmd is not None:
                    self.dmd.uncond = torch.zeros_like(dr["ctx"])  # CFG's unconditional branch: the all-zero context
                    target = self.teacher_target(dr, stage) if d.regression_weight > 0 else None
                    out = self.dmd.generator_loss(
                        x0, self._score_process(process), dr["ctx"], x_teacher=target, generator=dr["gen"]
                    )
                    loss = out.total
                    parts["dmd"] = out.dmd
                    if out.regression is not None:
                        parts["regression"] = out.regression
                else:
                    target = self.teacher_target(dr, stage)
                    for p in self.critic_params:
                        p.requires_grad_(False)
                    try:
                        xf, tf = self._adv_inputs(x0, process, dr)
                        out = adversarial.generator_loss(
                            self.disc(xf, tf, dr["ctx"]), x0, target, d.adv_weight, d.rec_weight
                        )
                    finally:
                        for p in self.critic_params:
                            p.requires_grad_(True)
                    loss = out.total
                    parts["adversarial"] = out.adversarial
                    parts["reconstruction"] = out.reconstruction
                (loss / nb).backward()
                sums["generator_loss"] += float(loss.detach()) / nb
                for name, v in parts.items():
                    sums[name] = sums.get(name, 0.0) + float(v.detach()) / nb
            metrics["lr"] = self.gen_opt.param_groups[0]["lr"]
            metrics["grad_norm"] = self._clip_step(self.gen_params, self.gen_opt, self.gen_sched)
        metrics.update(self._global_mean(sums))
        self.step += 1
        return metrics

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``train.steps`` with logging and checkpoints; export at the end."""
        tc = self.cfg.train
        if resume:
            path = latest_checkpoint(self.out)
            if path is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
            self.load_checkpoint(path)
        metrics_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            trim_metrics(metrics_path, self.step)
        self._barrier()
        bar = None
        if tc.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, unit="it", desc=f"distill {self.variant}")
        history = []
        t0 = time.perf_counter()
        try:
            while self.step < tc.steps:
                m = self.train_step()
                m["seconds"] = time.perf_counter() - t0
                history.append(m)
                if self.rank == 0 and (self.step % tc.log_every == 0 or self.step == tc.steps):
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(m) + "\n")
                if bar is not None:
                    bar.update()
                if self.step % self.cfg.checkpoint.every == 0 or self.step == tc.steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.cfg.checkpoint.export:
            self.export()
        return history

    # ----------------------------------------------------------------------- checkpoints
    @staticmethod
    def _full_optim(opt: torch.optim.Optimizer) -> dict[str, Any]:
        """``opt.state_dict()`` with sharded DTensor states gathered (a collective under FSDP: every rank calls it)."""
        sd = opt.state_dict()
        sd["state"] = {
            i: {k: _full(v) if hasattr(v, "full_tensor") else v for k, v in st.items()} for i, st in sd["state"].items()
        }
        return sd

    @staticmethod
    def _distribute_like(full: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tensors of ``full`` sharded like the DTensors of ``targets`` (others unchanged)."""
        from torch.distributed.tensor import distribute_tensor

        out = {}
        for k, v in full.items():
            t = targets.get(k)
            out[k] = (
                distribute_tensor(v.to(t.device), t.device_mesh, t.placements)
                if t is not None and hasattr(t, "device_mesh")
                else v
            )
        return out

    def _load_optim(self, opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
        if self.fsdp:
            from torch.distributed.tensor import distribute_tensor

            params = [p for g in opt.param_groups for p in g["params"]]
            for i, st in sd["state"].items():
                p = params[int(i)]
                if hasattr(p, "device_mesh"):
                    for k, v in st.items():
                        if torch.is_tensor(v) and k != "step" and tuple(v.shape) == tuple(p.shape):
                            st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
        opt.load_state_dict(sd)

    def _state(self) -> dict[str, Any]:
        """The checkpoint state with full (gathered) tensors; under FSDP every rank must call it."""
        gen = {f"module.{n}": p for n, p in self.gen_module.named_parameters() if p.requires_grad}
        if self.lora is not None:
            gen.update({f"lora.{k}": v for k, v in self.lora.state_dict().items()})
        critic = self.critic_model.state_dict() if self.dmd is not None else self.disc.head.state_dict()
        state = {
            "step": self.step,
            "generator": {k: _full(v) for k, v in gen.items()},
            "critic": {k: _full(v) for k, v in critic.items()},
            "gen_opt": self._full_optim(self.gen_opt),
            "critic_opt": self._full_optim(self.critic_opt),
            "gen_sched": self.gen_sched.state_dict(),
            "critic_sched": self.critic_sched.state_dict(),
            "config": self.cfg.to_json(),
        }
        teacher = self.original if self.variant == "dmd-ot" else self.ppf_teacher
        if teacher is not None:  # finetuned at the start of the run
            state["teacher"] = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
        return state

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<7-digit step>`` atomically (temporary directory + ``os.replace``) and point ``latest`` at it (rank 0)."""
        root = self.out / "checkpoints"
        name = f"step_{self.step:07d}"
        state = self._state() if self.fsdp else None  # FSDP: gathering the shards is a collective
        if self.rank != 0:
            self._barrier()
            return root / name
        tmp = root / f".tmp-{name}"
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        torch.save(state if state is not None else self._state(), tmp / "state.pt")
        (tmp / "COMPLETE").write_text(name + "\n")
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(root / "latest", name + "\n")
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[: -self.cfg.checkpoint.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint of :meth:`save_checkpoint` (the same variant, LoRA rank and pyramid)."""
        path = Path(path)
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        for section, key in (
            ("distill", "variant"),
            ("distill", "lora_rank"),
            ("pyramid", "num_stages"),
            ("model", "config"),
        ):
            if saved[section][key] != getattr(getattr(self.cfg, section), key):
                raise ValueError(
                    f"checkpoint {path} was trained with {section}.{key} = {saved[section][key]!r}, the config says {getattr(getattr(self.cfg, section), key)!r}"
                )
        gen = state["generator"]
        module = {k[len("module.") :]: v for k, v in gen.items() if k.startswith("module.")}
        module = self._distribute_like(module, dict(self.gen_module.named_parameters()))
        result = self.gen_module.load_state_dict(module, strict=False)
        if result.unexpected_keys or len(module) != sum(1 for p in self.gen_module.parameters() if p.requires_grad):
            raise ValueError(f"checkpoint {path}: the generator's trained parameters do not match this run")
        if self.lora is not None:
            self.lora.load_state_dict({k[len("lora.") :]: v for k, v in gen.items() if k.startswith("lora.")})
        critic = self.critic_model if self.dmd is not None else self.disc.head
        critic.load_state_dict(self._distribute_like(state["critic"], critic.state_dict()))
        if "teacher" in state:
            (self.original if self.variant == "dmd-ot" else self.ppf_teacher).load_state_dict(state["teacher"])
        self._load_optim(self.gen_opt, state["gen_opt"])
        self._load_optim(self.critic_opt, state["critic_opt"])
        self.gen_sched.load_state_dict(state["gen_sched"])
        self.critic_sched.load_state_dict(state["critic_sched"])
        self.step = int(state["step"])
        self._barrier()

    # ---------------------------------------------------------------------------- export
    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's WanDiT weights (LoRA merged)."""
        base = {
            k: _full(v) if hasattr(v, "full_tensor") else v.detach().cpu() for k, v in self.student.state_dict().items()
        }
        return self.lora.merged_state_dict(base, 0) if self.lora is not None else base

    def export(self) -> Path:
        """Write the distilled transformer and ``pyrflow.json`` (kind ``distilled``) to ``<output_dir>/export``
        (PPF: plus the per-level layers in ``ppf_levels.safetensors`` and ``ppf_patches`` in the card)."""
        from ..sample import ModelCard

        card = ModelCard(
            kind="distilled",
            num_stages=self.S,
            boundaries=tuple(self.cfg.pyramid.boundaries),
            resampler=self.cfg.pyramid.resampler,
            factors=tuple(self.cfg.pyramid.factors),
            rope=self.cfg.model.rope,
            schedule=self.cfg.distill.schedule,
            ppf_patches=self.ppf_student.patches if self.ppf_student is not None else (),
        )
        out, tmp = self.out / "export", self.out / ".tmp-export"
        sd = self.student_state_dict()  # every rank: gathering FSDP shards is a collective
        levels = None
        if self.ppf_student is not None:
            levels = {
                k: _full(v).contiguous() for k, v in self.ppf_student.state_dict().items() if not k.startswith("model.")
            }
        if self.rank != 0:
            self._barrier()
            return out
        shutil.rmtree(tmp, ignore_errors=True)
        ck = self.cfg.checkpoint
        write_model_dir(tmp, sd, card, self.model_cfg, self.cfg.model.path, ck.export_layout, ck.link_components)
        if levels is not None:  # the per-level layers (pyrflow_fast.sample.load_ppf)
            from safetensors.torch import save_file

            from ..sample import PPF_FILE

            save_file(levels, str(tmp / PPF_FILE))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        self._barrier()
        return out
