r"""The shipped default model: a small Wan-architecture text-to-video model trained here on *shapes*.

- :mod:`~pyrflow_fast.shapes.data`: the procedural dataset (coloured shapes moving over photos);
- :mod:`~pyrflow_fast.shapes.analyze`: prompt adherence and temporal consistency from pixels;
- :mod:`~pyrflow_fast.shapes.components`: the frozen tokenizer, text encoder and pixel space;
- :mod:`~pyrflow_fast.shapes.recipe`: reproduces the shipped checkpoints through the project's CLIs;
- :mod:`~pyrflow_fast.shapes.results`: the quality / speed table;
- :mod:`~pyrflow_fast.shapes.sampling`: a shipped checkpoint loaded and sampled at the dataset's size;
- :mod:`~pyrflow_fast.shapes.probe`: how well a checkpoint follows its prompts (analyzer scores on the
  prompt grid, and how much a wrong word raises the denoising error): the quick check while training;
- ``python -m pyrflow_fast.shapes``: generate a video with a shipped checkpoint (``make sample``).

The checkpoints live in ``pyrflow_fast/shapes/models/<name>`` (complete model directories that
:func:`pyrflow_fast.pipeline.load_components` and ``pyrflow-sample`` load), with ``recipe.json``
recording the commands, configurations and run times that produced them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS", "ROUTES", "SHIPPED", "model_dir"]

SHIPPED = Path(__file__).parent / "models"
#: Shipped checkpoints: name -> what it is.
MODELS: dict[str, str] = {
    "conventional": "trained with Wan's flow-matching loss; samples 0-0-50 (plain Euler, CFG)",
    "pyramidal": "the conventional model finetuned pyramidally; samples 20-20-10 (pyramidal Euler, CFG)",
    "distilled": "the pyramidal model distilled with DMD (dmd-pt*) to 2-2-1 (few-step, no CFG)",
    "distilled-plain": (
        "the conventional model distilled with DMD (dmd-ot) to 0-0-2 at full resolution (few-step, no CFG)"
    ),
}
#: The paper's other distillation routes, all to 2-2-1 from the same models: the rows of the results table that
#: are not shipped (``python -m pyrflow_fast.shapes.recipe --steps dmd-ot ...`` writes them to ``WORK/routes``).
ROUTES: dict[str, str] = {
    "dmd-ot": "the pyramidal model distilled with DMD against the conventional model (multi-resolution finetuned), "
    "plain re-noising",
    "dmd-pt": "as distilled, with the band-weighted DMD gradient",
    "adv-od": "the pyramidal model distilled adversarially, discriminator on the conventional model's features",
    "adv-pd": "the pyramidal model distilled adversarially, discriminator on the pyramidal model's features",
    "ppf": "the conventional model finetuned with pyramidal patchification (4, 8, 16 pixel patches as stages), "
    "then distilled with DMD",
}


def model_dir(name: str, root: str | Path = SHIPPED) -> Path:
    """The model directory ``name`` (one of :data:`MODELS` or :data:`ROUTES`) under ``root`` (default: the
    shipped ones)."""
    if name not in MODELS and name not in ROUTES:
        raise ValueError(f"unknown shapes model {name!r}; expected one of {', '.join([*MODELS, *ROUTES])}")
    path = Path(root) / name
    if not (path / "pyrflow.json").is_file():
        how = f"--steps {name}" if name in ROUTES else "(the shipped checkpoints)"
        raise FileNotFoundError(f"{path} is missing: build it with python -m pyrflow_fast.shapes.recipe {how}")
    return path
