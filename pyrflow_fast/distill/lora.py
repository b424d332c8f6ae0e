r"""LoRA on the student (DMD variants PT and PT*), reusing the trainer's :class:`~pyrflow_fast.train.lora.LoRA`.

PT and PT* distil the pyramidal finetune into itself: the student starts as the teacher and
only low-rank adapters are trained (the paper uses LoRA there to prevent divergence). So the
frozen teacher need not be a second copy: it is the student's base with the adapters switched off
(:class:`AdaptersOff`).

>>> from pyrflow_fast.wan import WanDiT
>>> student = WanDiT("tiny")
>>> lora = student_lora(student, rank=2)
>>> any(p.requires_grad for p in student.parameters()), all(p.requires_grad for p in lora.parameters())
(False, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..train.lora import LoRA

__all__ = ["AdaptersOff", "student_lora"]


def student_lora(model: nn.Module, rank: int, alpha: float = 0.0, *, freeze_base: bool = True) -> LoRA:
    """Attach one shared LoRA set to ``model`` (a ``WanDiT``) and freeze its base weights.

    :param model: the student; its forward now includes the adapters (``B = 0`` at first, so it
        starts exactly at the base model).
    :param rank: adapter rank.
    :param alpha: scale numerator (``alpha / rank``; 0 means ``alpha = rank``).
    :param freeze_base: set ``requires_grad = False`` on the base parameters.
    :returns: the :class:`~pyrflow_fast.train.lora.LoRA` module, whose parameters are the ones to optimise.
    """
    if freeze_base:
        model.requires_grad_(False)
    return LoRA(model, rank=rank, alpha=alpha, num_sets=1)


class AdaptersOff:
    """A callable that runs ``fn`` with ``lora``'s adapters disabled: the frozen base as teacher.

    :param lora: the student's adapters.
    :param fn: the student's callable (a ``WanDiT``, a backbone, or a samplers' model).
    """

    def __init__(self, lora: LoRA, fn: Callable[..., Any]) -> None:
        self.lora = lora
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lora.disabled():
            return self.fn(*args, **kwargs)
