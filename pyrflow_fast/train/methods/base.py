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

from ..distributed import Distributed

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
    def export(self, folder: Path, ema: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the trained model directory into ``folder`` (rank 0; every rank calls it, gathering is a
        collective). ``ema``: the averaged parameters of each role with EMA, by parameter name."""
