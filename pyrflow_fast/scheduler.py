"""The diffusers scheduler of a model directory: Wan2.1's ``UniPCMultistepScheduler`` unless it says otherwise.

diffusers' ``WanPipeline`` loads ``scheduler/scheduler_config.json`` (every component its
``model_index.json`` lists must be present), so exports write one (:func:`write_scheduler`), and
:func:`load_scheduler_config` reads it back for pyrflow's sampler, falling back to Wan's default with
a warning for folders without one.

Wan's default is :data:`pyrflow_fast.solvers.WAN_SCHEDULER_CONFIG` (diffusers' Wan docs and
``Wan-AI/Wan2.1-T2V-*-Diffusers``): UniPC on flow sigmas, ``prediction_type="flow_prediction"``,
1000 training timesteps and ``flow_shift=3.0`` (diffusers recommends 3.0 at 480p, 5.0 at 720p).
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["SCHEDULER_DIR", "load_scheduler_config", "write_scheduler"]

SCHEDULER_DIR = "scheduler"


def write_scheduler(model_dir: str | Path, config: dict | None = None) -> Path:
    """Write ``model_dir/scheduler/scheduler_config.json`` with diffusers' own writer (every field filled in).

    :param config: a scheduler config with ``_class_name`` (default: Wan's,
        :data:`~pyrflow_fast.solvers.WAN_SCHEDULER_CONFIG`).
    :returns: the scheduler folder.
    """
    import diffusers

    from .solvers import WAN_SCHEDULER_CONFIG

    config = dict(WAN_SCHEDULER_CONFIG if config is None else config)
    cls = getattr(diffusers, config.pop("_class_name"))
    folder = Path(model_dir) / SCHEDULER_DIR
    cls.from_config({k: v for k, v in config.items() if not k.startswith("_")}).save_pretrained(folder)
    return folder


def load_scheduler_config(model_dir: str | Path) -> dict:
    """The scheduler config of ``model_dir`` (``scheduler/scheduler_config.json``) as a dict.

    A folder without one (an original-layout download, an old export) gets a copy of
    :data:`~pyrflow_fast.solvers.WAN_SCHEDULER_CONFIG` and a ``UserWarning`` that says so; ValueError for
    a file that is not a JSON object with ``_class_name``
    (:func:`~pyrflow_fast.pipeline.geometry.read_scheduler_config`).
    """
    from .pipeline.geometry import read_scheduler_config
    from .solvers import WAN_SCHEDULER_CONFIG

    config = read_scheduler_config(model_dir)
    if config is None:
        warnings.warn(
            f"{model_dir} has no {SCHEDULER_DIR}/scheduler_config.json; using Wan2.1's default scheduler "
            f"(UniPCMultistepScheduler, flow_shift={WAN_SCHEDULER_CONFIG['flow_shift']})",
            UserWarning,
            stacklevel=2,
        )
        return dict(WAN_SCHEDULER_CONFIG)
    return config
