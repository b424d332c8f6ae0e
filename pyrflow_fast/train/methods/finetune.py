r"""Pyramidal finetuning of a Wan2.1 transformer with the pyramidal loss: :class:`PyramidalFinetune`.

One optimizer step consumes ``grad_accum`` micro-batches of the *global* batch of
``N = samples_per_stage * S * world_size`` samples. Slot ``j`` of a micro-batch trains stage
``j mod S`` (:func:`~pyrflow_fast.train.loss.stage_of_slot`), takes the dataset item at position
``data_pos + j`` of a seeded per-epoch permutation, and its draws come from ``(seed, step,
micro * N + j)``; rank ``r`` takes the contiguous slots ``[r n, (r + 1) n)``, ``n = N / world_size``,
which hold ``samples_per_stage`` samples of every stage. Nothing depends on the world size except
the split, so one process with ``samples_per_stage = 2 k`` and two with ``k`` see the same batch.

Each stage group of a micro-batch is one forward and one backward (so per-stage LoRA sets and
gradient checkpointing stay consistent); gradients are synchronised on the last backward of the
step only (``no_sync`` for DDP, ``set_requires_gradient_sync`` for FSDP2). The loss of a group is
the sum of its per-sample MSEs divided by the local samples of the step, so the accumulated
gradient is the gradient of the batch mean (DDP and FSDP average over ranks). The loss sees only
the wrapped net (a :class:`~pyrflow_fast.contract.BackboneDenoiser` under DDP / FSDP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ...card import ModelCard, write_model_dir
from ...contract import BackboneDenoiser, WanBackbone
from ...parallel.wan import shard_blocks
from ...wan import WanDiT
from ..distributed import Distributed, full_state, sync_gradients
from ..inputs import build_dataset, check_dataset, resolve_model_config
from ..lora import LoRA, write_lora_export
from ..loss import PyramidalLoss, collate, draw, stage_of_slot
from ..sharding import mp_policy
from .base import Method, Role, Update

__all__ = ["PyramidalFinetune"]


class PyramidalFinetune(Method):
    """Finetune a WanDiT with the pyramidal loss.

    One role, ``"model"``: the backbone and LoRA as one :class:`~pyrflow_fast.contract.BackboneDenoiser`.

    :param config: a ``TrainConfig``.
    :param dataset: any dataset of clean pyramids (default: :func:`~pyrflow_fast.train.inputs.build_dataset`).
    :param backbone: the base WanDiT (default: :func:`~pyrflow_fast.train.inputs.load_backbone` of ``config.model``).
    """

    label = "pyramidal finetune"
    resume_keys = (("model", "config"), ("lora", "rank"), ("lora", "per_stage"), ("pyramid", "num_stages"))

    def __init__(
        self, config, dist: Distributed, dataset: Dataset | None = None, backbone: WanDiT | None = None
    ) -> None:
        super().__init__(config, dist)
        train = config.train
        self.pyramid, self.windows = config.pyramid.build()
        self.loss_fn = PyramidalLoss(
            self.pyramid, self.windows, config.loss.weighting, sigma_shift=config.loss.sigma_shift
        )
        self.S = config.pyramid.num_stages

        # architecture and data are checked before any weights are read
        self.model_config = (
            backbone.config if backbone is not None else resolve_model_config(config.model.config, config.model.path)
        )
        self.dataset = (
            dataset
            if dataset is not None
            else build_dataset(config.data, self.pyramid, self.model_config.in_dim, self.model_config.text_dim)
        )
        check_dataset(self.dataset, self.pyramid, self.model_config, config.data)

        base, self.lora = self._base(backbone)
        base.set_gradient_checkpointing(train.gradient_checkpointing)
        self.teacher_model = None
        self.teacher = self._build_teacher(base) if config.loss.distill_weight > 0 else None
        self.net = BackboneDenoiser(WanBackbone(base, rope=config.model.rope), lora=self.lora)
        self.wrapped = self._wrap(self.net)
        optimizer = self.adamw([p for p in self.net.parameters() if p.requires_grad], config.optim.lr)
        self.roles = {"model": Role(self.net, optimizer, train.steps, ema_decay=config.ema.decay)}
        self.data_pos = 0
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def param_names(self) -> list[str]:
        """Names of the trained parameters in :attr:`net`."""
        return self.roles["model"].names

    def _adapters(self, base: WanDiT) -> LoRA:
        """The LoRA of ``[lora]`` on ``base`` (its base weights frozen)."""
        base.requires_grad_(False)
        sets = self.S if self.config.lora.per_stage else 1
        return LoRA(base, self.config.lora.rank, self.config.lora.alpha, sets)

    def _base(self, backbone: WanDiT | None) -> tuple[WanDiT, LoRA | None]:
        """The float32 base model and its LoRA (``None`` without): a given ``backbone``, else
        :meth:`~pyrflow_fast.train.methods.base.Method.wan` of ``model.path`` (under FSDP: built on meta, blocks
        sharded with their adapters, loaded or initialised shard by shard)."""
        lora = self._adapters if self.config.lora.rank > 0 else None
        if backbone is None:
            return self.wan(self.config.model.path, lora=lora)
        base = backbone.to(self.device).float()
        adapters = lora(base).to(self.device) if lora is not None else None
        if self.dist.fsdp:
            shard_blocks(base, mp_policy=mp_policy(self.bf16), lora=adapters)
        return base, adapters

    def _build_teacher(self, base: WanDiT):
        """The frozen teacher of the distillation term: ``model.teacher_path``, else the initial model (with
        LoRA: the base with the adapters switched off, run through the wrapper). Its weights are bf16 when
        the run computes in bf16 (autocast would cast them anyway), float32 otherwise; under FSDP it is
        sharded per block and at its root, loaded shard by shard."""
        config = self.config
        teacher = None
        if config.model.teacher_path or self.lora is None:  # else the base with the adapters off
            path = config.model.teacher_path
            teacher = self.wan(path, dtype=self.frozen_dtype, copy_from=None if path else base)[0]
            self.shard_root(teacher, frozen=True)
        if teacher is not None:
            teacher = WanBackbone(teacher.eval().requires_grad_(False), rope=config.model.rope)
        self.teacher_model = teacher
        """The frozen teacher's backbone (``None``: the base with the adapters off)."""

        def run(x_nat, t, context, full_size=None, stage=0):
            with self.autocast():
                if teacher is not None:
                    return teacher(x_nat, t, context, full_size=full_size)
                with self.lora.disabled():  # through the wrapper: FSDP unshards the base there
                    return self.wrapped(x_nat, t, context, full_size, stage)

        return run

    def _wrap(self, net: BackboneDenoiser) -> nn.Module:
        mode = self.config.train.parallel
        if mode == "none":
            return net
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(net, device_ids=ids)
        # the blocks are sharded already, each with its LoRA adapters; the root group holds the embeddings and head
        self.shard_root(net)
        return net

    # ------------------------------------------------------------------------------ data
    @property
    def global_batch(self) -> int:
        """Samples per micro-batch over all processes."""
        return self.config.train.samples_per_stage * self.S * self.dist.world

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            rng = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.dataset), generator=rng)}
        return self._perms[epoch]

    def _index(self, ordinal: int) -> int:
        n = len(self.dataset)
        return int(self._perm(ordinal // n)[ordinal % n])

    def local_micro_batch(self, step: int, micro: int) -> tuple[list[dict], list[int], list]:
        """This rank's items, stages and draws of micro-batch ``micro`` of step ``step``."""
        train = self.config.train
        n_local = train.samples_per_stage * self.S
        items, stages, draws = [], [], []
        for j in range(self.rank * n_local, (self.rank + 1) * n_local):
            item = self.dataset[self._index(self.data_pos + j)]
            stage = stage_of_slot(j, self.S)
            shape = tuple(item["x0s"][stage].shape)
            items.append(item)
            stages.append(stage)
            draws.append(draw(train.seed, step, micro * self.global_batch + j, shape, self.config.data.text_dropout))
        return items, stages, draws

    # -------------------------------------------------------------------------- training
    def train_step(self, step: int, update: Update) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's metrics (global over ranks)."""
        train = self.config.train
        n_local = train.samples_per_stage * self.S * train.grad_accum
        w = self.config.loss.distill_weight
        sums = torch.zeros(2 * self.S + 1, dtype=torch.float64)  # per-stage mse sums, counts, distill sum
        for micro in range(train.grad_accum):
            items, stages, draws = self.local_micro_batch(step, micro)
            groups = sorted(set(stages))
            for gi, stage in enumerate(groups):
                idx = [n for n, s in enumerate(stages) if s == stage]
                x0s, eps, rho, ctx = collate(
                    [items[n] for n in idx], [draws[n] for n in idx], stage, self.S, self.device
                )
                last = micro == train.grad_accum - 1 and gi == len(groups) - 1
                with sync_gradients(self.wrapped, train.parallel, last):
                    with self.autocast():
                        g = self.loss_fn.group_loss(self.wrapped, x0s, eps, rho, stage, ctx, teacher=self.teacher)
                    loss = g.mse.sum()
                    if g.distill is not None:
                        loss = loss + w * g.distill.sum()
                    (loss / n_local).backward()
                sums[stage] += float(g.mse.detach().sum())
                sums[self.S + stage] += len(idx)
                if g.distill is not None:
                    sums[2 * self.S] += float(g.distill.detach().sum())
            self.data_pos += self.global_batch
        self.dist.all_sum(sums)
        lr, norm = update("model")
        count = float(sums[self.S : 2 * self.S].sum())
        mse = float(sums[: self.S].sum()) / count
        metrics: dict[str, Any] = {"step": step + 1, "loss": mse + w * float(sums[2 * self.S]) / count, "mse": mse}
        for i in range(self.S):
            metrics[f"loss_stage{i}"] = float(sums[i] / sums[self.S + i])
        if self.teacher is not None:
            metrics["distill"] = float(sums[2 * self.S]) / count
        metrics.update(lr=lr, grad_norm=norm, epoch=self.data_pos // len(self.dataset))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        n = len(self.dataset)
        return {"data_pos": self.data_pos, "epoch": self.data_pos // n, "index": self.data_pos % n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data_pos = int(state["data_pos"])

    # ---------------------------------------------------------------------------- export
    def card(self) -> ModelCard:
        """The card of the finetuned model (``pyramidal``, or ``base`` for one stage)."""
        config = self.config
        return ModelCard(
            kind="pyramidal" if self.S > 1 else "base",
            num_stages=self.S,
            boundaries=tuple(config.pyramid.boundaries),
            resampler=config.pyramid.resampler,
            factors=tuple(config.pyramid.factors),
            rope=config.model.rope,
            uncond="zeros" if config.data.text_dropout > 0 else "prompt",
            # trained at shifted noise levels: sample there by default (uniform training keeps Wan's 5)
            shift=config.loss.sigma_shift if config.loss.sigma_shift != 1.0 else None,
        )

    def sampling(self) -> dict[str, Any]:
        """The base and its LoRA; under FSDP the wrapper's root group (embeddings, head) is gathered around it."""
        return {"transformer": self.net.backbone.model, "lora": self.lora, "card": self.card(), "gather": self.net}

    def export(self, folder: Path, ema: dict[str, dict[str, torch.Tensor]]) -> None:
        """The finetuned transformer and ``pyrflow.json``.

        Full finetune: one checkpoint. LoRA: :func:`~pyrflow_fast.train.lora.write_lora_export` (shared: the
        merged checkpoint plus ``lora/pytorch_lora_weights.safetensors``; per-stage: the base with one diffusers
        LoRA file per stage in its card, and ``stage{i}`` with set ``i`` merged, exact at stage ``i`` only).
        """
        # rank 0 writes: it gathers the EMA (when exported) and the parameters it does not replace, nothing twice
        averaged = set(self.param_names) if "model" in ema and self.config.ema.export else set()
        raw = ((k, v) for k, v in self.net.state_dict().items() if k not in averaged)
        full = full_state(raw, keep=self.rank == 0)
        if averaged:
            full.update(ema["model"])
        if self.rank != 0:
            return
        config = self.config
        prefix = "backbone.model."
        base_sd = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        card = self.card()
        ck = config.checkpoint
        where = dict(
            source_path=config.model.path,
            layout=ck.export_layout,
            link_components=ck.link_components,
            max_shard_size=ck.export_max_shard_size or None,
        )
        if self.lora is None:
            write_model_dir(folder, base_sd, card, self.model_config, **where)
        else:
            adapters = {k[len("lora.") :]: v for k, v in full.items() if k.startswith("lora.")}
            write_lora_export(folder, self.lora, base_sd, card, self.model_config, adapters, **where)
