r"""The training runner: one loop for every method (pyramidal finetune, DMD, adversarial, PPF).

:class:`Runner` starts the process group (:class:`~pyrflow_fast.train.distributed.Distributed`),
seeds the global RNG with ``train.seed``, builds the method the config names
(:data:`~pyrflow_fast.train.methods.METHODS`) and runs it to ``train.steps``: the method's
``train_step`` does the forward and backward passes and calls :meth:`Runner.update` for each role
it updates; the runner averages replicated gradients (methods without a DDP wrapper), clips the
global norm to ``optim.grad_clip``, steps the optimizer and its LR schedule and updates the EMA.
Every ``checkpoint.every`` steps (and at the end) it writes a checkpoint
(:class:`~pyrflow_fast.train.checkpoint.CheckpointManager`), rank 0 appends the metrics to
``<output_dir>/metrics.jsonl`` every ``train.log_every`` steps, every ``samples.every`` steps the current
model samples a few prompts (:class:`~pyrflow_fast.train.samples.PeriodicSamples`), and at the end the method
exports ``<output_dir>/export`` (written to ``.tmp-export`` and moved into place).

The LR schedule of a role that makes :math:`N` updates, with :math:`W` = ``optim.warmup_steps``,
multiplies the peak rate by

.. math::

    \lambda(n) = \frac{n + 1}{W + 1} \ (n < W), \qquad
    \lambda(n) = 1 \ \text{(constant)} \ \text{or} \
    r + (1 - r) \tfrac12 \bigl(1 + \cos \pi \min(1, \tfrac{n - W}{\max(1, N - W)})\bigr) \ \text{(cosine)}

at update :math:`n` (from 0), :math:`r` = ``optim.min_lr_ratio``. The warm-up is a straight line
from 0 (at update :math:`-1`) to the peak at update :math:`W`: no update runs at rate 0, all
:math:`W` warm-up updates are below the peak, and the first constant update continues the line
(with ``(n + 1) / W`` the last warm-up update would already run at the peak, a kink).

>>> [round(lr_lambda(2, "constant", 0.0, 10)(n), 3) for n in range(4)]
[0.333, 0.667, 1.0, 1.0]
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .checkpoint import (
    CheckpointManager,
    latest_checkpoint,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    trim_metrics,
)
from .distributed import Distributed, clip_grad_norm, full_state
from .methods import build_method
from .samples import PeriodicSamples

__all__ = ["Runner", "lr_lambda"]


def lr_lambda(warmup: int, schedule: str, min_ratio: float, total: int) -> Callable[[int], float]:
    """The LR factor of update ``n`` of ``total`` (see the module docstring)."""

    def factor(n: int) -> float:
        if n < warmup:
            return (n + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (n - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Runner:
    """Train the method ``config`` names (see the module docstring).

    :param config: a ``TrainConfig`` (pyramidal finetune) or ``DistillConfig`` (its ``distill.variant``).
    :param dataset: the clean pyramids (default: built from ``config.data``).
    :param backbone: the base WanDiT of a finetune (default: read from ``config.model``).
    """

    def __init__(self, config: Any, dataset: Dataset | None = None, backbone=None) -> None:
        self.config = config
        self.dist = Distributed(config.train.parallel, config.train.device, config.train.collective_timeout)
        torch.manual_seed(config.train.seed)
        self.method = build_method(config, self.dist, dataset=dataset, backbone=backbone)
        o = config.optim
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                role.optimizer, lr_lambda(o.warmup_steps, o.schedule, o.min_lr_ratio, role.updates)
            )
            for name, role in self.method.roles.items()
        }
        self.ema = {
            name: [p.detach().clone() for p in role.params]
            for name, role in self.method.roles.items()
            if role.ema_decay > 0
        }
        self.step = 0
        self.out = Path(config.train.output_dir)
        ck = config.checkpoint
        self.checkpoints = CheckpointManager(self.out / "checkpoints", self.dist, ck.keep_last, ck.async_save)
        self.samples = PeriodicSamples(self)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()

    @property
    def rank(self) -> int:
        return self.dist.rank

    # -------------------------------------------------------------------------- training
    def update(self, name: str) -> tuple[float, float]:
        """Clip, step and schedule the optimizer of role ``name`` and update its EMA; returns the learning
        rate the step used and the gradient norm before clipping."""
        role = self.method.roles[name]
        if role.average:
            self.dist.average_gradients(role.params)
        norm = clip_grad_norm(role.params, self.config.optim.grad_clip)
        lr = role.optimizer.param_groups[0]["lr"]
        role.optimizer.step()
        self.schedulers[name].step()
        role.optimizer.zero_grad(set_to_none=True)
        if name in self.ema:
            with torch.no_grad():
                if self.dist.fsdp:  # sharded DTensors: one lerp per parameter
                    for e, p in zip(self.ema[name], role.params):
                        e.lerp_(p.detach(), 1 - role.ema_decay)
                else:
                    torch._foreach_lerp_(self.ema[name], [p.detach() for p in role.params], 1 - role.ema_decay)
        return lr, norm

    def train_step(self) -> dict[str, Any]:
        """One step of the method; returns its metrics."""
        metrics = self.method.train_step(self.step, self.update)
        self.step += 1
        return metrics

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``train.steps``, checkpointing and logging; export at the end; returns this call's metrics."""
        train = self.config.train
        if resume:
            path = latest_checkpoint(self.out)
            if path is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
            self.load_checkpoint(path)
        metrics_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            trim_metrics(metrics_path, self.step)
        self.dist.barrier()
        bar = None
        if train.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=train.steps, initial=self.step, unit="step", desc=self.method.label)
        history = []
        t0, s0 = time.perf_counter(), self.step
        try:
            while self.step < train.steps:
                m = self.train_step()
                m["seconds"] = time.perf_counter() - t0
                m["steps_per_s"] = (self.step - s0) / max(m["seconds"], 1e-9)
                history.append(m)
                if self.rank == 0 and (self.step % train.log_every == 0 or self.step == train.steps):
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(m) + "\n")
                if bar is not None:
                    if "loss" in m:
                        bar.set_postfix(loss=f"{m['loss']:.4f}", steps_per_s=f"{m['steps_per_s']:.2f}")
                    bar.update()
                self.samples(self.step)
                if self.step % self.config.checkpoint.every == 0 or self.step == train.steps:
                    self.save_checkpoint()
            self.checkpoints.finish()
        finally:
            if bar is not None:
                bar.close()
        if self.config.checkpoint.export:
            self.export()
        return history

    # ----------------------------------------------------------------------- checkpoints
    def _training_state(self) -> dict[str, Any]:
        """Everything a resume restores besides the RNG, as this rank holds it (FSDP2: DTensor shards):
        the structure :meth:`save_checkpoint` writes and :meth:`load_checkpoint` reads into."""
        roles = self.method.roles
        return {
            "models": {name: model_state(role.module) for name, role in roles.items()},
            "optimizers": {name: optimizer_state(role.module, role.optimizer) for name, role in roles.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "ema": {name: dict(zip(roles[name].names, shadow)) for name, shadow in self.ema.items()},
            "method": self.method.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<7-digit step>`` (sharded; see :mod:`pyrflow_fast.train.checkpoint`)."""
        meta = {"step": self.step, "world_size": self.dist.world, "config": self.config.to_dict()}
        return self.checkpoints.save(self.step, meta, self._training_state())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint of :meth:`save_checkpoint`, written at any world size (the RNG files of
        ranks this run has; the draws of every method depend on the seed, step and sample slot only)."""
        state = self._training_state()
        meta = self.checkpoints.load(path, state, self.config, self.method.resume_keys)
        for name, role in self.method.roles.items():
            load_model_state(role.module, state["models"][name])
            load_optimizer_state(role.module, role.optimizer, state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
        # the EMA shadows are loaded in place (DCP writes into the tensors of the state)
        self.method.load_state_dict(state["method"])
        self.step = int(meta["step"])
        self.dist.barrier()

    def _full_ema(self) -> dict[str, dict[str, torch.Tensor]]:
        """The EMA of every role as full CPU tensors by parameter name on rank 0, which writes the export (a
        collective under FSDP; the other ranks get empty dicts and never hold a whole copy)."""
        return {
            name: full_state(zip(self.method.roles[name].names, shadow), keep=self.rank == 0)
            for name, shadow in self.ema.items()
        }

    # ---------------------------------------------------------------------------- export
    def export(self) -> Path:
        """Write the method's model directory to ``<output_dir>/export`` (through ``.tmp-export``)."""
        out, tmp = self.out / "export", self.out / ".tmp-export"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.method.export(tmp, self._full_ema())
        if self.rank == 0:
            if out.exists():
                shutil.rmtree(out)
            tmp.replace(out)
        self.dist.barrier()
        return out

    def close(self) -> None:
        """Tear down the process group this runner created."""
        self.dist.close()
