r"""The training configuration: nested dataclasses, every field documented, read from JSON or TOML.

``python -m pyrflow_fast.train --print-default-config`` prints the defaults as commented TOML
(``--format json`` for JSON). A config file sets any subset of the fields; unknown sections or
fields are an error.

>>> config = TrainConfig.from_dict({"train": {"steps": 10}, "lora": {"rank": 4}})
>>> config.train.steps, config.lora.rank, config.optim.lr
(10, 4, 1e-05)
>>> try:
...     TrainConfig.from_dict({"train": {"stepz": 1}})
... except ValueError as err:
...     print(str(err).split(";")[0])
unknown field 'train.stepz'
>>> try:
...     TrainConfig.from_dict({"optim": {"lr": "abc"}})
... except ValueError as err:
...     print(err)
optim.lr: expected a float, got 'abc' (str)
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pyrflow_ref.resample import TRANSITION_FAMILIES
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES

from .config_values import check_section, raise_first, toml_value

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EMAConfig",
    "LoRAConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PyramidConfig",
    "RunConfig",
    "SamplesConfig",
    "TrainConfig",
    "TrainSection",
    "load_config",
    "synthetic_run",
]


def _f(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with a documentation string (``metadata["doc"]``)."""
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


def _collective_timeout_field() -> Any:
    """``train.collective_timeout``, the same field in every ``[train]`` section."""
    return _f(
        600.0,
        "ddp/fsdp: seconds a collective (gradient all-reduce, barrier, broadcast) may wait for the other ranks; a "
        "stalled or dead rank then ends the run with an error naming this field instead of hanging it.",
    )


@dataclass
class ModelConfig:
    """``[model]``: the backbone to finetune."""

    path: str = _f(
        "",
        "Pretrained WanDiT checkpoint (a Wan2.1 directory in the original or diffusers layout, or a weights file); "
        "empty: random initialisation of `config` (tests, from-scratch runs).",
    )
    config: str = _f(
        "wan2.1-t2v-1.3b",
        "Named architecture (pyrflow_fast.wan.CONFIGS: wan2.1-t2v-1.3b, wan2.1-t2v-14b, tiny, tiny-3layer). With "
        "`path` set, the checkpoint's config.json must describe the same architecture, otherwise the run stops "
        "with an error; empty: take the architecture from the checkpoint.",
    )
    rope: str = _f(
        "integer",
        "RoPE positions at coarse stages: `integer` (Wan's) or `scaled` (positions on the full-resolution grid).",
    )
    teacher_path: str = _f(
        "",
        "Frozen teacher for the distillation term (`loss.distill_weight` > 0); empty: the initial model (with "
        "LoRA: the base model with adapters switched off, no extra memory).",
    )


@dataclass
class PyramidConfig:
    """``[pyramid]``: the pyramid the model is finetuned for (written to ``pyrflow.json``; distillation shares it)."""

    num_stages: int = _f(3, "Number of stages S (1 = plain flow matching, Wan's loss).")
    boundaries: list[float] = _f(
        list(WAN_DEFAULT_BOUNDARIES),
        "The S - 1 inner stage boundaries in global sigma, finest first (default: Wan's 50-step shift-5 grid at "
        "steps 40 and 20: 5/9, 15/17).",
    )
    resampler: str = _f("haar", "Resampler family of the latent pyramid: `haar` or `dct`.")
    factors: list[int] = _f(
        [2, 2, 2], "Per-transition factors (T, H, W) on the latent (the first-frame rule applies on T)."
    )

    def build(self):
        """The :class:`~pyrflow_fast.resample.Pyramid` and :class:`~pyrflow_ref.windows.StageWindows` of this
        section: the one place a run turns ``[pyramid]`` into them (finetune and distillation alike)."""
        from pyrflow_ref.windows import StageWindows

        from ..card import latent_pyramid

        return latent_pyramid(self.resampler, self.factors, self.num_stages), StageWindows(self.boundaries)


@dataclass
class DataConfig:
    """``[data]``: where the clean stage pyramids come from."""

    kind: str = _f(
        "cache",
        "`cache`: a latent cache written by `python -m pyrflow_fast.data.cache` "
        "(pyrflow_fast.data.cache.LatentCache); `synthetic`: the procedural latent videos of "
        "pyrflow_fast.train.synthetic (tests, evidence).",
    )
    path: str = _f("", "Cache directory (kind = cache).")
    latent_size: list[int] = _f(
        [21, 56, 104],
        "Expected stage-0 latent size (F, H, W) of the cache (default: 81x448x832 pixels, the paper's training "
        "resolution); a cache of another size is an error; [] accepts any size (kind = cache).",
    )
    synthetic_samples: int = _f(256, "Number of synthetic videos (kind = synthetic).")
    synthetic_classes: int = _f(4, "Number of synthetic text classes (kind = synthetic).")
    synthetic_size: list[int] = _f(
        [5, 16, 16], "Stage-0 latent size (F, H, W) of the synthetic videos (kind = synthetic)."
    )
    synthetic_seed: int = _f(0, "Seed of the synthetic dataset (kind = synthetic).")
    text_dropout: float = _f(
        0.0,
        "Probability of training a sample with an all-zero text context (the padding Wan uses); Pyramid Flow uses "
        "0.1 from scratch, a finetune of Wan keeps its own unconditional branch, so 0.",
    )


@dataclass
class LossConfig:
    """``[loss]``: the pyramidal flow-matching loss (theory §3)."""

    weighting: str = _f(
        "sigma",
        "`sigma`: MSE of dx/dsigma in orthonormal units (theory §3); `natural`: the same error divided per frame "
        "by the bridge factor (1 - vs) + g vs, i.e. the MSE of the model's natural velocity (Pyramid Flow's "
        "natural-unit loss), so that coarse stages with gains up to 8 do not dominate the gradient. Both equal "
        "Wan's loss for S = 1.",
    )
    distill_weight: float = _f(
        0.0,
        "Weight of the distillation term: MSE between the student's and the frozen teacher's dx/dsigma on the same "
        "input (0: off).",
    )
    sigma_shift: float = _f(
        1.0,
        "Shift s of each sample's uniform noise level rho -> s rho / (1 + (s - 1) rho) before its stage window "
        "(1: uniform, as before). s > 1 trains more at high noise, like the sampler's timestep shift; an export "
        "trained with s != 1 samples at shift s by default (its card's shift). Must be finite and > 0.",
    )


@dataclass
class OptimConfig:
    """``[optim]``: AdamW, learning-rate schedule, clipping."""

    lr: float = _f(1e-5, "Peak learning rate (full finetune; use about 1e-4 for LoRA).")
    betas: list[float] = _f([0.9, 0.95], "AdamW betas (Pyramid Flow's training script).")
    weight_decay: float = _f(1e-4, "AdamW weight decay (Pyramid Flow's training script).")
    eps: float = _f(1e-8, "AdamW epsilon.")
    warmup_steps: int = _f(500, "Linear warm-up steps from 0 to `lr`.")
    schedule: str = _f(
        "constant",
        "After warm-up: `constant` (Pyramid Flow) or `cosine` (decay to `min_lr_ratio * lr` at the last step).",
    )
    min_lr_ratio: float = _f(0.0, "Final learning rate of the cosine schedule, relative to `lr`.")
    grad_clip: float = _f(
        1.0, "Clip the global gradient norm to this value (0: no clipping; the norm is still logged)."
    )


@dataclass
class LoRAConfig:
    """``[lora]``: low-rank adapters on the attention and FFN Linear layers of every block."""

    rank: int = _f(0, "Adapter rank; 0 = full finetune (all parameters trained).")
    alpha: float = _f(0.0, "Adapter scale numerator: the update is (alpha / rank) B A; 0 means alpha = rank.")
    per_stage: bool = _f(
        False,
        "One adapter set per stage (the set of the sub-batch's stage is active); false: one set shared by all stages.",
    )


@dataclass
class EMAConfig:
    """``[ema]``: exponential moving average of the trained parameters."""

    decay: float = _f(0.0, "EMA decay per optimizer step (0: no EMA; 0.999 averages over about 1000 steps).")
    export: bool = _f(True, "Export the EMA weights instead of the raw ones when EMA is on.")


@dataclass
class CheckpointConfig:
    """``[checkpoint]``: resumable training state and the exported model."""

    every: int = _f(500, "Write a training checkpoint every this many optimizer steps (and at the end).")
    async_save: bool = _f(
        False,
        "Write the checkpoint shards in a background thread (torch.distributed.checkpoint.async_save): training "
        "continues after the state is staged in host memory; the checkpoint counts once the next save or the end "
        "of the run finalises it (costs one more host copy of the training state).",
    )
    keep_last: int = _f(2, "Keep this many most recent training checkpoints.")
    export: bool = _f(True, "At the end, export the model (WanDiT checkpoint + pyrflow.json) to `<output_dir>/export`.")
    export_layout: str = _f(
        "diffusers",
        "Layout of the export: `diffusers` (transformer/ + scheduler/ + model_index.json; loads with diffusers' "
        "WanPipeline, PyramidalWanPipeline and pyrflow-sample; an original-layout source's VAE, umT5 and "
        "tokenizer are converted once into `<output_dir>/components/` and linked) or `original` (Wan's release "
        "layout: config.json + diffusion_pytorch_model.safetensors, linking an original source's .pth files; "
        "diffusers cannot load it).",
    )
    export_max_shard_size: str = _f(
        "5GB",
        "Split the exported transformer into safetensors shards of at most this size plus an index file (the "
        "layout of the Wan2.1-14B release; diffusers and pyrflow load both); empty: one file.",
    )
    link_components: bool = _f(
        True,
        "When `model.path` is a full Wan2.1 directory, symlink its VAE, text encoder and tokenizer into the export "
        "so that it is a complete model directory for pyrflow_fast.sample.",
    )


@dataclass
class SamplesConfig:
    """``[samples]``: videos of a few prompts sampled with the current model during training."""

    every: int = _f(
        0,
        "Every this many steps, sample `prompts` with the current model (its EMA when there is one) into "
        "`<output_dir>/samples/step_<7-digit step>/prompt<i>.<format>` (rank 0 writes; every rank of a sharded "
        "model takes part); needs the text encoder and VAE of `model.path`; 0: off.",
    )
    prompts: list[str] = _f([], "The prompts of the periodic samples.")
    size: list[int] = _f([17, 480, 832], "Frames, height and width of the periodic samples.")
    seed: int = _f(0, "Seed of the periodic samples (the same noise at every step, so they are comparable).")
    format: str = _f("mp4", "`mp4` or `gif`.")


@dataclass
class TrainSection:
    """``[train]``: steps, batch, precision, parallelism."""

    output_dir: str = _f("outputs/pyramidal", "Run directory: metrics.jsonl, checkpoints/, export/.")
    steps: int = _f(5000, "Optimizer steps (the paper: 5K).")
    samples_per_stage: int = _f(
        2, "Samples of each stage per device and micro-batch (the paper: 2, i.e. 6 per GPU for 3 stages)."
    )
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    seed: int = _f(
        0,
        "Seed of initialisation, data order, stage noise and rho; noise and rho of a sample depend only on (seed, "
        "step, global sample index), not on the number of processes.",
    )
    precision: str = _f(
        "auto",
        "`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16` (autocast; weights, optimizer and loss stay "
        "fp32).",
    )
    gradient_checkpointing: bool = _f(
        True, "Recompute each transformer block in the backward pass (WanDiT.set_gradient_checkpointing)."
    )
    parallel: str = _f(
        "none",
        "`none`, `ddp` (DistributedDataParallel) or `fsdp` (FSDP2 fully_shard per transformer block, each with its "
        "LoRA adapters, and at the root; the backbone and the teacher are built on the meta device and read shard "
        "by shard, or initialised shard by shard as one process would; bf16 precision all-gathers bf16 parameters "
        "with float32 gradient reduction); launch with torchrun for ddp/fsdp. Checkpoints are sharded (DCP) and "
        "resume at any world size.",
    )
    device: str = _f("auto", "`auto` (cuda:LOCAL_RANK when CUDA is available, else cpu), `cpu` or `cuda`.")
    collective_timeout: float = _collective_timeout_field()
    log_every: int = _f(1, "Append a metrics line to metrics.jsonl every this many steps.")
    progress: bool = _f(True, "Show a tqdm progress bar (rank 0).")


@dataclass
class RunConfig:
    """What every configuration of a command over the Runner is: the sections it shares with the others
    (``[pyramid]``, ``[data]``, ``[optim]``, ``[checkpoint]``, ``[samples]``) plus its own, read from nested dicts,
    type-checked, validated and written back as TOML, JSON or a Markdown reference.

    A subclass is a dataclass that declares its own sections, among them ``train`` (with the run fields
    ``steps``, ``device``, ``precision``, ``parallel``, ``collective_timeout``, ``log_every`` that
    :meth:`validate` checks), names its :attr:`method` and extends :meth:`validate`. Every field is
    checked against its annotation when the config is built (an int is fine for a float field and is
    stored as a float; a bool is not an int), before any value is used.
    """

    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)

    def __post_init__(self) -> None:
        for section in dataclasses.fields(self):
            check_section(section.name, getattr(self, section.name), section.default_factory)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError on inconsistent values of the shared sections and the run fields (names the field)."""
        p, t = self.pyramid, self.train
        raise_first(
            [
                (p.num_stages >= 1, "pyramid.num_stages must be >= 1"),
                (
                    len(p.boundaries) == p.num_stages - 1,
                    f"pyramid.boundaries must have num_stages - 1 = {p.num_stages - 1} values, got {p.boundaries}",
                ),
                (
                    p.resampler in TRANSITION_FAMILIES,
                    f"pyramid.resampler must be one of {TRANSITION_FAMILIES}, got {p.resampler!r}",
                ),
                (len(p.factors) == 3, "pyramid.factors must be three ints (T, H, W)"),
                (
                    self.data.kind in ("cache", "synthetic"),
                    f"data.kind must be 'cache' or 'synthetic', got {self.data.kind!r}",
                ),
                (0.0 <= self.data.text_dropout < 1.0, "data.text_dropout must be in [0, 1)"),
                (len(self.data.latent_size) in (0, 3), "data.latent_size must be [F, H, W] or []"),
                (self.optim.lr > 0, "optim.lr must be > 0"),
                (self.optim.schedule in ("constant", "cosine"), "optim.schedule must be 'constant' or 'cosine'"),
                (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
                (self.checkpoint.every >= 1, "checkpoint.every must be >= 1"),
                (self.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
                (self.samples.every >= 0, "samples.every must be >= 0"),
                (
                    not self.samples.every or (self.samples.prompts and self.model.path),
                    "samples.every > 0 needs samples.prompts and a model.path with the text encoder and VAE",
                ),
                (len(self.samples.size) == 3, "samples.size must be [frames, height, width]"),
                (self.samples.format in ("mp4", "gif"), "samples.format must be 'mp4' or 'gif'"),
                (
                    self.checkpoint.export_layout in ("original", "diffusers"),
                    "checkpoint.export_layout must be 'original' or 'diffusers'",
                ),
                (t.steps >= 1, "train.steps must be >= 1"),
                (t.device in ("auto", "cpu", "cuda"), "train.device must be 'auto', 'cpu' or 'cuda'"),
                (t.precision in ("auto", "fp32", "bf16"), "train.precision must be 'auto', 'fp32' or 'bf16'"),
                (
                    t.parallel in ("none", "ddp", "fsdp"),
                    f"train.parallel must be 'none', 'ddp' or 'fsdp', got {t.parallel!r}",
                ),
                (
                    math.isfinite(t.collective_timeout) and t.collective_timeout > 0,
                    f"train.collective_timeout must be a positive number of seconds, got {t.collective_timeout}",
                ),
                (t.log_every >= 1, "train.log_every must be >= 1"),
            ]
        )

    # --------------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from nested dicts; every section and field is optional, unknown ones are errors."""
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, values in data.items():
            if name not in sections:
                raise ValueError(f"unknown config section {name!r}; known: {', '.join(sections)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a table/object, got {type(values).__name__}")
            section_cls = sections[name].default_factory
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            for key in values:
                if key not in known:
                    raise ValueError(f"unknown field '{name}.{key}'; known: {', '.join(known)}")
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_toml(self) -> str:
        """Commented TOML (every field preceded by its documentation); parses back to the same config."""
        lines = [f"# {type(self).__doc__}", ""]
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            lines.append(f"# {type(obj).__doc__}")
            lines.append(f"[{section.name}]")
            for f in dataclasses.fields(obj):
                lines.append(f"# {f.metadata['doc']}")
                lines.append(f"{f.name} = {toml_value(getattr(obj, f.name))}")
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def reference_markdown(cls) -> str:
        """A Markdown table of every field (section, name, default, meaning) for the docs."""
        rows = ["| field | default | meaning |", "|---|---|---|"]
        for section in dataclasses.fields(cls):
            obj = section.default_factory()
            for f in dataclasses.fields(obj):
                value = toml_value(getattr(obj, f.name)).replace("|", "\\|")
                rows.append(f"| `{section.name}.{f.name}` | `{value}` | {f.metadata['doc']} |")
        return "\n".join(rows) + "\n"


@dataclass
class TrainConfig(RunConfig):
    """The whole configuration of ``python -m pyrflow_fast.train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def method(self) -> str:
        """The training method's name in :data:`pyrflow_fast.train.methods.METHODS`."""
        return "finetune"

    def validate(self) -> None:
        """Raise ValueError on inconsistent values (names the field)."""
        super().validate()
        raise_first(
            [
                (self.model.rope in ("integer", "scaled"), "model.rope must be 'integer' or 'scaled'"),
                (self.loss.weighting in ("sigma", "natural"), "loss.weighting must be 'sigma' or 'natural'"),
                (self.loss.distill_weight >= 0, "loss.distill_weight must be >= 0"),
                (
                    math.isfinite(self.loss.sigma_shift) and self.loss.sigma_shift > 0,
                    "loss.sigma_shift must be finite and > 0",
                ),
                (self.lora.rank >= 0, "lora.rank must be >= 0"),
                (0.0 <= self.ema.decay < 1.0, "ema.decay must be in [0, 1)"),
                (self.train.samples_per_stage >= 1, "train.samples_per_stage must be >= 1"),
                (self.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
            ]
        )


def load_config(path: str | Path, cls: type = TrainConfig) -> Any:
    """Read a ``.json`` or ``.toml`` config file of ``cls`` (the training or the distillation config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file {path} must end in .json or .toml")
    return cls.from_dict(data)


def synthetic_run(output_dir: str | Path, **sections: dict[str, Any]) -> TrainConfig:
    """A small CPU run of the ``tiny`` model on synthetic data (tests, benchmarks, the CPU evidence).

    Defaults: no progress bar, no gradient checkpointing, float32 on the CPU. ``sections`` update
    them section by section, e.g. ``synthetic_run(out, train={"steps": 4}, ema={"decay": 0.9})``.

    >>> synthetic_run("/tmp/run", train={"steps": 3}).train.steps
    3
    """
    data: dict[str, dict[str, Any]] = {
        "model": {"config": "tiny"},
        "data": {"kind": "synthetic"},
        "train": {
            "output_dir": str(output_dir),
            "progress": False,
            "gradient_checkpointing": False,
            "device": "cpu",
            "precision": "fp32",
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(data)
