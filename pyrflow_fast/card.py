"""Model cards and model directories: what a checkpoint is, and how it is read and written.

A *model directory* is a Wan2.1 download in the diffusers or the original layout
(:mod:`pyrflow_fast.pipeline.layout`), optionally with a ``pyrflow.json`` :class:`ModelCard` that
says what kind of checkpoint it is and which pyramid it was trained for, and, for a
pyramidal-patchification checkpoint, the per-stage layers in ``ppf_stages.safetensors``. A
directory without a card is a plain Wan checkpoint (``kind = "base"``, default schedule ``0-0-50``).

- :class:`ModelCard` reads and writes ``pyrflow.json``;
- :func:`latent_pyramid` is the latent pyramid of a card's pyramid fields (also what training and
  distillation build from their ``pyramid`` config), with the families of
  :data:`pyrflow_ref.resample.TRANSITION_FAMILIES`;
- :func:`write_model_dir` writes a transformer state dict and its card as a model directory,
  linking the frozen components of the source directory (those of an original-layout source converted
  once into diffusers folders, :func:`diffusers_components`, so that diffusers loads every export);
- :func:`load_ppf` loads the per-stage layers of a PPF checkpoint.

>>> card = ModelCard(kind="pyramidal")
>>> card.schedule, card.pyramid().num_stages
('20-20-10', 3)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pyrflow_ref.plan import Plan
from pyrflow_ref.resample import TRANSITION_FAMILIES
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows, parse_schedule

from .resample import Pyramid
from .wan import WanConfig, WanDiT
from .wan.checkpoint import assign_state_dict, save_wan

__all__ = [
    "CARD_FILE",
    "COMPONENTS_DIR",
    "DEFAULT_SCHEDULE",
    "KINDS",
    "PPF_FILE",
    "UNCONDS",
    "ModelCard",
    "default_components_dir",
    "diffusers_components",
    "latent_pyramid",
    "load_ppf",
    "write_model_dir",
]

KINDS = ("base", "pyramidal", "distilled")
"""Checkpoint kinds: plain Wan, pyramidally finetuned, distilled few-step generator."""

UNCONDS = ("prompt", "zeros")
"""Unconditional branch of CFG: the negative prompt's embedding, or the all-zero context."""

CARD_FILE = "pyrflow.json"
PPF_FILE = "ppf_stages.safetensors"
DEFAULT_SCHEDULE = {"base": "0-0-50", "pyramidal": "20-20-10", "distilled": "2-2-1"}
"""Default schedule of a 3-stage card of each kind; with other stage counts the coarse stages take 0
steps and stage 0 the last entry."""


def latent_pyramid(resampler: str, factors: Sequence[int], num_stages: int) -> Pyramid:
    """The latent pyramid of ``num_stages`` stages: identical ``resampler`` transitions with factors ``(T, H, W)``.

    Every transition keeps frame 0 apart (the first-frame rule, as Wan's causal VAE needs), so a stage-0
    latent ``(B, C, F, H, W)`` needs ``F = 1 + T^(S-1) k`` frames and ``H, W`` divisible by
    ``H^(S-1)``, ``W^(S-1)``. ValueError for a family outside
    :data:`~pyrflow_ref.resample.TRANSITION_FAMILIES` (``haar``, ``dct``).

    >>> latent_pyramid("haar", (2, 2, 2), 3).shapes((1, 16, 21, 56, 104))[2]
    (1, 16, 6, 14, 26)
    """
    if resampler not in TRANSITION_FAMILIES:
        raise ValueError(
            f"unknown resampler {resampler!r} for sampling; expected {' or '.join(map(repr, TRANSITION_FAMILIES))}"
        )
    return Pyramid.uniform(resampler, tuple(int(f) for f in factors), num_stages, first_frame=True)


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is (stored as ``pyrflow.json`` in the model directory).

    :param kind: ``base`` (plain Wan), ``pyramidal`` (pyramidally finetuned) or ``distilled``
        (few-step generator, no CFG).
    :param num_stages: pyramid stages the checkpoint was trained for.
    :param boundaries: inner stage boundaries, finest first.
    :param resampler: resampler family (``haar``, ``dct``: :data:`~pyrflow_ref.resample.TRANSITION_FAMILIES`).
    :param factors: per-transition factors ``(T, H, W)`` on the latent.
    :param rope: ``integer`` or ``scaled`` RoPE positions at coarse stages.
    :param schedule: default schedule.
    :param ppf_patches: per-stage patches ``(T, H, W)`` of a pyramidal-patchification checkpoint
        (finest first, one per stage; :mod:`pyrflow_fast.ppf`), whose per-stage layers are in
        ``ppf_stages.safetensors``; empty: a resolution-pyramid checkpoint.
    :param uncond: unconditional branch of CFG: ``prompt`` (the negative prompt's embedding, as
        Wan) or ``zeros`` (the all-zero context, for models trained with ``data.text_dropout``).
    :param guidance: default CFG scale (``base`` and ``pyramidal`` checkpoints).
    :param size: default video size ``(frames, height, width)`` in pixels, the size the model was trained
        at; ``None``: Wan's 81x480x832.
    :param lora_files: LoRA files (diffusers format, relative to the model directory) that sampling applies
        on top of the directory's transformer: one per stage for per-stage LoRA (file ``i`` at stage ``i``,
        switched at every stage transition), one for a shared LoRA
        (:func:`pyrflow_fast.train.lora.load_card_lora`); empty: none.
    :param shift: default timestep shift of pyrflow's stage grids for this checkpoint (set it to the
        ``loss.sigma_shift`` it was trained with); ``None``: Wan's 5.0.
    """

    kind: str = "base"
    num_stages: int = 3
    boundaries: tuple[float, ...] = WAN_DEFAULT_BOUNDARIES
    resampler: str = "haar"
    factors: tuple[int, int, int] = (2, 2, 2)
    rope: str = "integer"
    schedule: str | None = None
    ppf_patches: tuple[tuple[int, int, int], ...] = ()
    uncond: str = "prompt"
    guidance: float = 5.0
    size: tuple[int, int, int] | None = None
    lora_files: tuple[str, ...] = ()
    shift: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {self.kind!r}; expected one of {KINDS}")
        if self.resampler not in TRANSITION_FAMILIES:
            raise ValueError(
                f"unknown resampler {self.resampler!r} for sampling; "
                f"expected {' or '.join(map(repr, TRANSITION_FAMILIES))}"
            )
        if len(self.boundaries) != self.num_stages - 1:
            raise ValueError(
                f"{self.num_stages} stages need {self.num_stages - 1} boundaries, got {list(self.boundaries)}"
            )
        StageWindows(self.boundaries)
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        object.__setattr__(self, "factors", tuple(int(f) for f in self.factors))
        if self.schedule is None:
            default = DEFAULT_SCHEDULE[self.kind]
            object.__setattr__(
                self,
                "schedule",
                default if self.num_stages == 3 else "-".join(["0"] * (self.num_stages - 1) + [default.split("-")[-1]]),
            )
        parse_schedule(self.schedule, self.num_stages)
        object.__setattr__(self, "ppf_patches", tuple(tuple(int(v) for v in p) for p in self.ppf_patches))
        if self.uncond not in UNCONDS:
            raise ValueError(f"unknown uncond {self.uncond!r}; expected one of {UNCONDS}")
        if self.size is not None:
            if len(self.size) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.size):
                raise ValueError(f"size must be three positive integers [frames, height, width], got {self.size}")
            object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "lora_files", tuple(str(f) for f in self.lora_files))
        if len(self.lora_files) not in (0, 1, self.num_stages):
            raise ValueError(
                f"lora_files must list one LoRA file (shared) or {self.num_stages} (one per stage), "
                f"got {len(self.lora_files)}: {list(self.lora_files)}"
            )
        if self.shift is not None and not (isinstance(self.shift, (int, float)) and 0 < self.shift < float("inf")):
            raise ValueError(f"shift must be a positive finite number or null, got {self.shift!r}")
        if self.ppf_patches and len(self.ppf_patches) != self.num_stages:
            raise ValueError(
                f"{self.num_stages} stages need {self.num_stages} PPF patches, got {list(self.ppf_patches)}"
            )

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelCard:
        """The card of ``model_dir``, or a ``base`` card when it has none."""
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown fields {unknown}; expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def save(self, model_dir: str | Path) -> Path:
        """Write ``pyrflow.json`` (every field, lists for tuples) into ``model_dir``; returns its path."""
        path = Path(model_dir) / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def pyramid(self) -> Pyramid:
        """The latent pyramid of the checkpoint (:func:`latent_pyramid` of its pyramid fields)."""
        return latent_pyramid(self.resampler, self.factors, self.num_stages)

    def windows(self) -> StageWindows:
        """The stage windows the checkpoint was trained with."""
        return StageWindows(self.boundaries)

    def plan(self, schedule: str | Plan | None = None, shift: float = 5.0) -> Plan:
        """The sampling :class:`~pyrflow_ref.plan.Plan` of ``schedule`` (default: the card's) on its windows."""
        return Plan.build(self.schedule if schedule is None else schedule, None, self.windows(), shift)


def write_model_dir(
    folder: Path,
    sd: dict[str, torch.Tensor],
    card: ModelCard,
    model_cfg: WanConfig,
    source_path: str = "",
    layout: str = "diffusers",
    link_components: bool = True,
    max_shard_size: int | str | None = None,
    components_dir: str | Path | None = None,
) -> None:
    """Write a WanDiT state dict ``sd`` of architecture ``model_cfg`` and its ModelCard ``card`` to ``folder``
    (safetensors shards plus an index when the weights exceed ``max_shard_size``, e.g. ``"5GB"``).

    When ``source_path`` is a full Wan2.1 directory and ``link_components`` is set, its VAE, text encoder,
    tokenizer (and scheduler) are symlinked, so ``folder`` is a complete model directory for
    :mod:`pyrflow_fast.sample`. A diffusers-layout folder also gets a ``scheduler/`` (the source's, else Wan's
    default, :func:`pyrflow_fast.scheduler.write_scheduler`) and a ``model_index.json`` listing exactly the
    components it holds (absent ones ``[null, null]``), so ``diffusers.WanPipeline.from_pretrained(folder)``
    loads it; ``pyrflow.json`` is an extra file diffusers ignores.

    :param layout: ``diffusers`` (``transformer/`` + ``scheduler/`` + ``model_index.json``; loads with
        diffusers, pyrflow and ``pyrflow-sample``) or ``original`` (``config.json`` + weights in ``folder``,
        Wan's own release layout, which diffusers cannot load). A diffusers-layout source always gives the
        diffusers layout; the components of an original-layout source are converted once into diffusers
        folders (:func:`diffusers_components`) for a diffusers export, linked as they are for an original one.
    :param components_dir: where those converted components are kept (default:
        :func:`default_components_dir`, ``components/`` beside the outermost export).
    """
    if layout not in ("diffusers", "original"):
        raise ValueError(f"export layout must be 'diffusers' or 'original', got {layout!r}")
    folder = Path(folder)
    with torch.device("meta"):
        model = WanDiT(model_cfg)
    assign_state_dict(model, {k: v.float() for k, v in sd.items()})
    source = Path(source_path) if source_path else None
    src_layout = None
    if link_components and source is not None and source.is_dir():
        from .pipeline.layout import MissingFilesError, find_layout

        try:
            src_layout = find_layout(source, transformer=False)
        except MissingFilesError:
            src_layout = None
    converted = src_layout == "original" and layout == "diffusers"
    if converted:
        cache = default_components_dir(folder) if components_dir is None else Path(components_dir)
        source, src_layout = diffusers_components(source, cache), "diffusers"
    if src_layout is not None:
        layout = src_layout
    folder.mkdir(parents=True, exist_ok=True)
    save_wan(model, folder, layout=layout, max_shard_size=max_shard_size)
    card.save(folder)
    if src_layout is not None:
        from .pipeline.layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, ORIGINAL_VAE_CONFIG

        names = (
            ["text_encoder", "tokenizer", "vae", "model_index.json"]
            if src_layout == "diffusers"
            else [ORIGINAL_VAE, ORIGINAL_VAE_CONFIG, ORIGINAL_T5, ORIGINAL_TOKENIZER.split("/")[0]]
        )
        for n in names:
            if (source / n).exists() and not (folder / n).exists():
                target = (source / n).resolve()
                # the conversion moves with the run folder that holds it: linked relatively
                os.symlink(os.path.relpath(target, folder.resolve()) if converted else target, folder / n)
    if layout == "diffusers":
        _write_diffusers_index(folder, source if src_layout == "diffusers" else None)


COMPONENTS_DIR = "components"
"""Folder (beside the exports) of the diffusers copies of original-layout sources' components."""


def default_components_dir(folder: str | Path) -> Path:
    """``components/`` beside the outermost export holding ``folder``: ``<run>/components`` for
    ``<run>/export`` and for the per-stage exports ``<run>/export/stage{i}`` alike (an ancestor with a
    ``pyrflow.json`` is an export, not the run folder), so every export of a run shares one conversion."""
    parent = Path(folder).resolve().parent
    while (parent / CARD_FILE).is_file() and parent != parent.parent:
        parent = parent.parent
    return parent / COMPONENTS_DIR


def diffusers_components(source: str | Path, cache: str | Path) -> Path:
    """The tokenizer, text encoder and VAE of the original-layout Wan2.1 folder ``source`` as diffusers
    folders (``tokenizer/``, ``text_encoder/``, ``vae/`` and a ``model_index.json`` naming their classes) in
    ``cache/<source name>-<key>``, converted on first use; returns that folder.

    The key hashes the source's resolved path and the size and modification time of each component file, so
    a changed source is converted anew. Weights keep their stored dtypes (Wan's umT5 file is bfloat16) and
    values: the models are loaded by :func:`~pyrflow_fast.pipeline.load_text_encoder` /
    :func:`~pyrflow_fast.pipeline.load_vae` and written by their own ``save_pretrained``, into a temporary
    folder renamed when complete, so an interrupted conversion is never used.
    """
    import hashlib
    import shutil

    import diffusers

    from .pipeline.components import load_text_encoder, load_tokenizer, load_vae
    from .pipeline.layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, ORIGINAL_VAE_CONFIG

    source = Path(source).resolve()
    digest = hashlib.sha256(str(source).encode())
    files = [source / ORIGINAL_VAE, source / ORIGINAL_VAE_CONFIG, source / ORIGINAL_T5]
    for path in [*files, *sorted((source / ORIGINAL_TOKENIZER).rglob("*"))]:
        if path.is_file():
            st = path.stat()
            digest.update(f"{path.relative_to(source)}:{st.st_size}:{st.st_mtime_ns};".encode())
    target = Path(cache) / f"{source.name}-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = load_tokenizer(source / ORIGINAL_TOKENIZER)
        tokenizer.save_pretrained(tmp / "tokenizer")
        load_text_encoder(source / ORIGINAL_T5, layout="original", dtype=None).save_pretrained(tmp / "text_encoder")
        load_vae(source / ORIGINAL_VAE, layout="original", dtype=None).save_pretrained(tmp / "vae")
        index = {
            "_class_name": "WanPipeline",
            "_diffusers_version": diffusers.__version__,
            **_PIPELINE_COMPONENTS,
            "tokenizer": ["transformers", type(tokenizer).__name__],
            "transformer": [None, None],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # not another writer's complete conversion
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_PIPELINE_COMPONENTS = {
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
}
"""``WanPipeline``'s components and their classes, as ``Wan-AI/Wan2.1-T2V-*-Diffusers`` lists them."""


def _write_diffusers_index(folder: Path, source: Path | None) -> None:
    """``scheduler/`` (the source's, linked, else Wan's default) and a ``model_index.json`` of ``folder``'s
    components (the source's classes where it names them; missing and pixel-space components ``[null, null]``)."""
    import diffusers

    from .pipeline.pixel import is_pixel_space
    from .scheduler import SCHEDULER_DIR, write_scheduler

    sched = folder / SCHEDULER_DIR
    if not sched.exists():
        if source is not None and (source / SCHEDULER_DIR / "scheduler_config.json").is_file():
            os.symlink((source / SCHEDULER_DIR).resolve(), sched)
        else:
            write_scheduler(folder)
    listed = {}
    index_path = folder / "model_index.json"
    if index_path.exists():  # the source's, linked: replaced by this folder's own
        listed = json.loads(index_path.read_text())
        index_path.unlink()
    config = json.loads((sched / "scheduler_config.json").read_text())
    index = {"_class_name": "WanPipeline", "_diffusers_version": diffusers.__version__}
    for name, default in _PIPELINE_COMPONENTS.items():
        present = (folder / name).is_dir() and (name == "tokenizer" or (folder / name / "config.json").is_file())
        if name == "vae" and present and is_pixel_space(folder / name):
            present = False  # pyrflow's pixel space is no diffusers model
        source_entry = listed.get(name)
        entry = source_entry if isinstance(source_entry, list) and source_entry[0] else default
        index[name] = entry if present else [None, None]
    index["scheduler"] = ["diffusers", config["_class_name"]]
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def load_ppf(model_dir: str | Path, transformer: torch.nn.Module, card: ModelCard):
    """The :class:`~pyrflow_fast.ppf.PPFWan` of a PPF checkpoint (``card.ppf_patches``), in eval mode.

    It shares ``transformer`` (the directory's :class:`~pyrflow_fast.wan.WanDiT`) and adds the
    per-stage layers of ``ppf_stages.safetensors``, read onto the transformer's device; FileNotFoundError
    without that file, ValueError when its keys do not fit the patches.
    """
    from .ppf import PPFWan
    from .wan.checkpoint import read_safetensors

    path = Path(model_dir) / PPF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is a PPF checkpoint ({CARD_FILE}) but has no {PPF_FILE}")
    ppf = PPFWan(transformer, card.ppf_patches)
    state = read_safetensors(path, device=next(transformer.parameters()).device)
    missing = ppf.load_state_dict(state, strict=False)
    extra = [k for k in missing.missing_keys if not k.startswith("model.")]
    if extra or missing.unexpected_keys:
        raise ValueError(f"{path}: missing {extra}, unexpected {missing.unexpected_keys}")
    return ppf.eval()
