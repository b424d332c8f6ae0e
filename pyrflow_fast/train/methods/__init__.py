"""The training methods and the one registry that maps a method name to its class.

``TrainConfig.method`` is ``"finetune"``; ``DistillConfig.method`` is ``distill.variant``
(:data:`pyrflow_fast.distill.config.VARIANTS`). Each entry is a class and the options it is built
with; nothing else in the package looks at the name.

>>> sorted(METHODS)
['adv-od', 'adv-pd', 'dmd-ot', 'dmd-pt', 'dmd-pt*', 'finetune', 'ppf']
"""

from __future__ import annotations

from typing import Any

from ...distill.dmd import DMDVariant
from ..distributed import Distributed
from .adversarial import AdversarialDistillation
from .base import Method, Role
from .dmd import DMDDistillation
from .finetune import PyramidalFinetune
from .ppf import PPFDistillation

__all__ = [
    "METHODS",
    "AdversarialDistillation",
    "DMDDistillation",
    "Method",
    "PPFDistillation",
    "PyramidalFinetune",
    "Role",
    "build_method",
]

METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {
    "finetune": (PyramidalFinetune, {}),
    "dmd-ot": (DMDDistillation, {"variant": DMDVariant.OT}),
    "dmd-pt": (DMDDistillation, {"variant": DMDVariant.PT}),
    "dmd-pt*": (DMDDistillation, {"variant": DMDVariant.PT_STAR}),
    "adv-od": (AdversarialDistillation, {"original_features": True}),
    "adv-pd": (AdversarialDistillation, {"original_features": False}),
    "ppf": (PPFDistillation, {}),
}
"""Method name -> (class, keyword options)."""


def build_method(config, dist: Distributed, dataset=None, backbone=None) -> Method:
    """The method ``config.method`` names, built on ``dist`` (``backbone``: a finetune's base WanDiT)."""
    cls, options = METHODS[config.method]
    extra = {"backbone": backbone} if backbone is not None else {}
    return cls(config, dist, dataset, **options, **extra)
