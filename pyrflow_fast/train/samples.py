"""Videos of a few prompts sampled with the current model every ``samples.every`` steps: :class:`PeriodicSamples`.

The runner calls it after every step. At a multiple of ``samples.every`` it samples ``samples.prompts`` with
what the method samples (:meth:`~pyrflow_fast.train.methods.base.Method.sampling`: the card's sampler and
schedule; a finetune's per-stage LoRA switches with the stage) at ``samples.size`` from ``samples.seed``, with
the EMA weights swapped in when the run keeps an EMA, and rank 0 writes
``<output_dir>/samples/step_<7-digit step>/prompt<i>.<format>`` (:func:`pyrflow_fast.sample.save`). The text
encoder and VAE are read once from ``model.path``. Every rank samples (the same noise and prompts): an FSDP-sharded
model gathers its blocks in the forward passes, so all ranks must run them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

__all__ = ["PeriodicSamples", "sample_folder"]


def sample_folder(output_dir: str | Path, step: int) -> Path:
    """``<output_dir>/samples/step_<7-digit step>``."""
    return Path(output_dir) / "samples" / f"step_{step:07d}"


@contextlib.contextmanager
def _swapped(params: list[torch.Tensor], values: list[torch.Tensor]):
    """``params`` hold ``values`` inside the block (local shards of DTensors alike), their own values after it."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


@contextlib.contextmanager
def _gathered(module) -> contextlib.AbstractContextManager:
    """An FSDP root's own group all-gathered inside the block (a no-op for anything else)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


class PeriodicSamples:
    """The runner's sampling callback (see the module docstring).

    :param runner: the :class:`~pyrflow_fast.train.runner.Runner` (its config, method, EMA and rank).
    """

    def __init__(self, runner) -> None:
        self.runner = runner
        self.config = runner.config.samples
        self._components = None

    def components(self):
        """The text encoder, VAE and scheduler config of ``model.path`` (read once, without the transformer)."""
        if self._components is None:
            from ..pipeline import load_components

            self._components = load_components(
                self.runner.config.model.path, device=self.runner.dist.device, transformer=False
            )
        return self._components

    def __call__(self, step: int) -> list[Path]:
        """After step ``step`` (counted from 1): sample and write when it is a multiple of ``samples.every``;
        returns the files written (rank 0)."""
        if not self.config.every or step % self.config.every:
            return []
        from ..sample import generate, save

        runner, c = self.runner, self.config
        what = runner.method.sampling()
        transformer = what["transformer"]
        frames, height, width = c.size
        swaps = [(runner.method.roles[n].params, shadow) for n, shadow in runner.ema.items()]
        folder = sample_folder(runner.out, step)
        written = []
        with contextlib.ExitStack() as stack:
            for params, shadow in swaps:
                stack.enter_context(_swapped(params, shadow))
            stack.enter_context(_gathered(what.get("gather")))
            components = dataclasses.replace(self.components(), transformer=transformer)
            for i, prompt in enumerate(c.prompts):
                result = generate(
                    components,
                    prompt,
                    card=what["card"],
                    seed=c.seed,
                    frames=frames,
                    height=height,
                    width=width,
                    progress=False,
                    lora=what.get("lora"),
                    ppf=what.get("ppf"),
                )
                if runner.rank == 0:
                    written += save(result, folder / f"prompt{i}.{c.format}")
        runner.dist.barrier()
        return written
