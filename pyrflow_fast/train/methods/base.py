"""The interface every training method implements for :class:`~pyrflow_fast.train.runner.Runner`.

A method owns its models (student, teacher, critic, discriminator ...), declares the trained ones
as :class:`Role` s (module, trained parameters, optimizer, number of updates), and implements one
:meth:`Method.train_step`. The runner owns everything around it: the process group, the LR
schedule of every role, clipping and the optimizer step (:meth:`~pyrflow_fast.train.runner.Runner.update`),
EMA, checkpoints, metrics and the export directory.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...wan import WanDiT
from ..distributed import Distributed
from ..inputs import load_backbone
from ..sharding import mp_policy, prime, sharded_wan

__all__ = ["Method", "Role", "Update"]

Update = Callable[[str], tuple[float, float]]
"""``update(role) -> (lr, grad_norm)``: clip, step and schedule the optimizer of ``role`` (the runner's)."""


class Role:
    """A trained model of a method.

    :param module: the root its parameters and optimizer state are checkpointed under (names relative to it).
    :param optimizer: the optimizer of its trained parameters (``requires_grad`` ones of ``module``).
    :param updates: how many optimizer steps the run makes (the length of the LR schedule).
    :param average: the runner averages the replicated gradients over the ranks before clipping (the
        method runs its modules without a DDP wrapper).
    :param ema_decay: keep an exponential moving average of the trained parameters (0: none).
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        updates: int,
        *,
        average: bool = False,
        ema_decay: float = 0.0,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.updates = updates
        self.average = average
        self.ema_decay = ema_decay
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]


class Method(abc.ABC):
    """A training method: its models, roles, one training step, its state and its export.

    :param config: the run's configuration (``TrainConfig`` or ``DistillConfig``).
    :param dist: the process group and device.
    """

    label = "train"
    """Progress-bar label."""
    resume_keys: tuple[tuple[str, str], ...] = ()
    """Config fields ``(section, field)`` a checkpoint must have been trained with to be resumed."""

    def __init__(self, config: Any, dist: Distributed) -> None:
        self.config = config
        self.dist = dist
        self.device = dist.device
        self.roles: dict[str, Role] = {}

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def bf16(self) -> bool:
        """Compute in bf16 autocast (``train.precision``: ``bf16``, or ``auto`` on CUDA); the trained weights,
        gradients and optimizer states stay float32 master copies."""
        p = self.config.train.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def autocast(self):
        """The autocast context of the forward passes (bf16 when :attr:`bf16`, else a no-op)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The weights' dtype of frozen models: bf16 when the run computes in bf16 (autocast would cast them
        anyway: half the memory), else float32."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def wan(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        lora: Callable[[WanDiT], nn.Module] | None = None,
        copy_from: WanDiT | None = None,
    ) -> tuple[WanDiT, Any]:
        """A WanDiT of ``model.config`` on this rank's device and the adapters ``lora(model)`` attaches (or ``None``).

        Its weights: ``copy_from``'s (a copy without its hooks, drawing nothing from the RNG), else the checkpoint
        at ``path``, else a random initialisation. Under FSDP it is built on meta with its blocks sharded (each
        with its adapters) and loaded shard by shard (:func:`~pyrflow_fast.train.sharding.sharded_wan`; the
        caller shards the root with :meth:`shard_root`); otherwise loaded whole.
        """
        if self.dist.fsdp or copy_from is not None:
            arch = self.config.model.config if copy_from is None else copy_from.config
            return sharded_wan(
                arch,
                path if copy_from is None else "",
                self.device,
                bf16=self.bf16,
                dtype=dtype,
                lora=lora,
                copy_from=copy_from,
                shard=self.dist.fsdp,
            )
        model = load_backbone(self.config.model.config, path).to(self.device, dtype)
        return model, (lora(model).to(self.device) if lora is not None else None)

    def shard_root(self, module: nn.Module, frozen: bool = False) -> None:
        """Under FSDP, ``fully_shard`` the root ``module`` (the one whose forward the run calls; its blocks are
        sharded already) unless it is sharded. ``frozen``: also gather each group once outside inference mode
        (:func:`~pyrflow_fast.train.sharding.prime`), for models called under ``torch.inference_mode``.

        The root group (embeddings, time projection, head) is resharded after every forward: FSDP2's default
        keeps a root gathered until its backward, and a model called without gradients (a frozen teacher, a
        roll-out, a score) has none, so every rank would hold that group whole for the rest of the run
        (14B: 232M parameters per model). A trained root is gathered once more at its backward."""
        if not self.dist.fsdp:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if not isinstance(module, FSDPModule):
            fully_shard(module, mp_policy=mp_policy(self.bf16), reshard_after_forward=True)
        if frozen:
            prime(module)

    def adamw(self, params: list[torch.Tensor], lr: float) -> torch.optim.AdamW:
        """AdamW over ``params`` with the ``[optim]`` betas, epsilon and weight decay."""
        o = self.config.optim
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    @abc.abstractmethod
    def train_step(self, step: int, update: Update) -> dict[str, Any]:
        """Step ``step`` (0-based): forward and backward passes, ``update(role)`` for every role it updates;
        returns the step's metrics (global over the ranks), ``"step"`` counting from 1."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The method's own checkpoint state besides its roles (every rank calls it)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    @abc.abstractmethod
    def sampling(self) -> dict[str, Any]:
        """The current model as :func:`pyrflow_fast.sample.generate` samples it: ``transformer`` (the WanDiT),
        ``card``, ``lora`` and ``ppf`` (or ``None``), and ``gather``: an FSDP root whose group the sampler's calls
        bypass (gathered around sampling), if any."""

    @abc.abstractmethod
    def export(self, folder: Path, ema: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the trained model directory into ``folder`` (rank 0; every rank calls it, gathering is a
        collective). ``ema``: the averaged parameters of each role with EMA, by parameter name."""
