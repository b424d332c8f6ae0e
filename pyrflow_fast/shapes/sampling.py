"""A shipped shapes model at the dataset's video size, shared by ``python -m pyrflow_fast.shapes`` and the results."""

from __future__ import annotations

from pathlib import Path

from ..card import ModelCard
from ..pipeline import WanComponents, load_components
from ..sample import Generation, generate
from . import SHIPPED, model_dir
from .components import load_embeddings
from .data import FRAMES, SIZE


def load(name: str, root: str | Path = SHIPPED) -> tuple[ModelCard, WanComponents]:
    """The card and components of shapes model ``name`` under ``root``.

    With a prompt-embedding table for its text encoder beside the model directories
    (:func:`~pyrflow_fast.shapes.components.load_embeddings`), the components carry the table instead of the
    tokenizer and text encoder (and ``transformers`` is not imported); without one, they carry the encoder.
    """
    path = model_dir(name, root)
    table = load_embeddings(path)
    return ModelCard.load(path), load_components(path, text_encoder=table is None, prompt_embeddings=table)


def card_frames(card: ModelCard) -> int:
    """The frames ``card``'s model samples: its size's, else the data's ``FRAMES``."""
    return card.size[0] if card.size else FRAMES


def sample(
    components: WanComponents,
    card: ModelCard,
    prompts: list[str] | str,
    schedule: str | None,
    seed: int,
    *,
    shift: float | None = None,
    frames: int | None = None,
    ppf=None,
) -> Generation:
    """:func:`~pyrflow_fast.sample.generate` of ``frames`` x ``SIZE`` x ``SIZE`` videos, without a progress bar
    (``shift``, ``ppf``: as ``generate``'s; ``frames``: default the card's, else the data's ``FRAMES``).

    Every schedule runs pyrflow's samplers (``solver="pyramid"``): the shipped results table was
    measured with them, plain schedules included.
    """
    return generate(
        components,
        prompts,
        card=card,
        schedule=schedule,
        solver="pyramid",
        shift=shift,
        seed=seed,
        frames=frames or card_frames(card),
        height=SIZE,
        width=SIZE,
        progress=False,
        ppf=ppf,
    )
