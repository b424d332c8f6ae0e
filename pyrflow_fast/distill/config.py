r"""The distillation configuration: nested dataclasses, every field documented, read from JSON or TOML.

``python -m pyrflow_fast.distill --print-default-config`` prints the defaults as commented TOML.
The ``[pyramid]``, ``[data]``, ``[optim]`` and ``[checkpoint]`` sections are the pyramidal
trainer's (:mod:`pyrflow_fast.train.config`); ``[model]``, ``[distill]`` and ``[train]`` are
distillation's own. Unknown sections or fields, an unknown variant and a schedule that does not
fit the pyramid's stage count are errors.

>>> config = DistillConfig.from_dict({"distill": {"variant": "dmd-pt", "schedule": "1-1-1"}})
>>> config.distill.variant, config.distill.schedule, config.distill.critic_ratio
('dmd-pt', '1-1-1', 5)
>>> try:
...     DistillConfig.from_dict({"distill": {"variant": "dmd-xx"}})
... except ValueError as err:
...     print(str(err).split(";")[0])
invalid config: unknown distillation variant 'dmd-xx'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyrflow_ref.windows import parse_schedule

from ..train.config import RunConfig, _collective_timeout_field, _f, load_config
from ..train.config_values import raise_first

__all__ = [
    "VARIANTS",
    "DistillConfig",
    "DistillModelConfig",
    "DistillRunConfig",
    "DistillSection",
    "load_distill_config",
]

VARIANTS: dict[str, str] = {
    "dmd-ot": "DMD with the original Wan as teacher (plain re-noising at each stage's resolution, after a brief "
    "multi-resolution flow-matching finetune of the teacher)",
    "dmd-pt": "DMD with the pyramidal teacher and the pyramidal forward process, band-weighted gradient",
    "dmd-pt*": "DMD with the pyramidal teacher and process, without band weights (the paper's final recipe)",
    "adv-od": "adversarial distillation, discriminator on frozen features of the original Wan",
    "adv-pd": "adversarial distillation, discriminator on frozen features of the pyramidal teacher",
    "ppf": "pyramidal patchification: flow-matching finetune of a PPF model (patch sizes as stages), then DMD with PPF "
    "student, teacher and critic",
}
"""Accepted ``distill.variant`` values and what they are."""


@dataclass
class DistillModelConfig:
    """``[model]``: the student, the teachers and their architecture."""

    path: str = _f(
        "",
        "The pyramidal checkpoint the student starts from (a Wan2.1 directory or weights file, e.g. the export of "
        "pyrflow-train); empty: random initialisation of `config` (tests).",
    )
    config: str = _f(
        "wan2.1-t2v-1.3b",
        "Named architecture (pyrflow_fast.wan.CONFIGS); with `path` set it must match the checkpoint's "
        "config.json; empty: take it from the checkpoint.",
    )
    rope: str = _f(
        "integer", "RoPE positions at coarse stages: `integer` or `scaled` (as the pyramidal finetune used)."
    )
    teacher_path: str = _f(
        "",
        "The pyramidal teacher (real score of dmd-pt / dmd-pt*, feature backbone of adv-pd, source of the "
        "regression and reconstruction targets); empty: the initial student (with LoRA: the student's base with "
        "the adapters switched off, no extra memory).",
    )
    original_path: str = _f(
        "", "The original Wan2.1 checkpoint (teacher of dmd-ot, feature backbone of adv-od); empty: `path`."
    )


@dataclass
class DistillSection:
    """``[distill]``: the distillation route and its hyper-parameters."""

    variant: str = _f("dmd-pt*", "One of " + ", ".join(f"`{k}` ({v})" for k, v in VARIANTS.items()) + ".")
    schedule: str = _f(
        "2-2-1",
        "The student's few-step schedule, steps per stage coarsest first (one entry per pyramid stage); the "
        "generator is rolled out along it (backward simulation) and it is written to the exported pyrflow.json.",
    )
    sample_shift: float = _f(5.0, "Timestep shift of the student's few-step grids (as pyrflow-sample's --shift).")
    guidance: float = _f(
        4.5, "Teacher CFG scale w in u + w (c - u), with the all-zero context as unconditional branch (1: no guidance)."
    )
    score_shift: float = _f(5.0, "Shift k of the DMD score levels (uniform in the unshifted variable, then shifted).")
    sigma_min: float = _f(0.02, "Lower clamp of the DMD score levels.")
    sigma_max: float = _f(0.98, "Upper clamp of the DMD score levels.")
    band_norm: str = _f("low", "dmd-pt: `low` (band weights divided by (1 - sigma)^2) or `none` (raw M^T M).")
    critic_ratio: int = _f(5, "Critic updates (DMD fake score, or discriminator head) per generator update.")
    regression_weight: float = _f(
        0.01,
        "DMD: weight of the teacher-regression term (MSE to the teacher's multi-step sample from the same noise, "
        "at the rolled-out stage); 0: off.",
    )
    regression_schedule: str = _f(
        "10-10-10",
        "Schedule of the teacher's multi-step samples (regression and reconstruction targets): pyramidal Euler "
        "with CFG for the pyramidal teacher; dmd-ot's teacher runs plain Euler at stage-0 resolution with the sum "
        "of the steps.",
    )
    lora_rank: int = _f(
        16,
        "Rank of the LoRA adapters on the student (the paper's recipe for PT and PT*); 0: full finetune of the "
        "student.",
    )
    lora_alpha: float = _f(0.0, "LoRA scale numerator (alpha / rank); 0 means alpha = rank.")
    critic_lr: float = _f(0.0, "Learning rate of the critic (fake score or discriminator head); 0: optim.lr.")
    teacher_finetune_steps: int = _f(
        200,
        "dmd-ot: steps of the multi-resolution flow-matching finetune of the original teacher (plain forward "
        "process at every stage resolution, one batch per stage and step); ppf: steps of the PPF diffusion "
        "finetune (plain process on the full latent, one batch per stage and step, sigma in the stage's window). "
        "The critic, and for ppf the student, start from the finetuned teacher; 0: skip.",
    )
    teacher_finetune_lr: float = _f(1e-5, "dmd-ot and ppf: learning rate of the teacher finetune (AdamW, no warm-up).")
    teacher_finetune_shift: float = _f(
        1.0,
        "dmd-ot and ppf: shift of the teacher finetune's noise levels (uniform in the unshifted variable over the "
        "stage's range, then shifted, as the DMD score levels); 1: uniform sigma, plain flow matching.",
    )
    feature_blocks: list[int] = _f(
        [],
        "adv-*: indices of the frozen backbone's blocks whose features the discriminator head reads; []: the block "
        "in the middle and the last block.",
    )
    disc_hidden: int = _f(128, "adv-*: hidden channels of each spatial / temporal branch of the discriminator head.")
    adv_weight: float = _f(1.0, "adv-*: weight of the adversarial (hinge) term of the generator loss.")
    ppf_patches: list[list[int]] = _f(
        [[1, 2, 2], [1, 4, 4], [1, 8, 8]],
        "ppf: patch (T, H, W) per stage on the full-resolution latent, finest first (one per pyramid stage; stage "
        "0 is the pretrained patch); the pyramid's boundaries are the stage windows.",
    )
    rec_weight: float = _f(
        2.0,
        "adv-*: weight of the reconstruction term (MSE to the pyramidal teacher's multi-step continuation of the "
        "state the student denoised, at the rolled-out stage); 0: off.",
    )
    dmd_weight: float = _f(
        0.0,
        "adv-*: weight of a DMD-PT* term added to the generator loss (DMD2's GAN term added to DMD: the pyramidal "
        "teacher as real score, a fake score trained beside the discriminator head, its regression term at "
        "distill.regression_weight); 0: the adversarial and reconstruction terms alone.",
    )


@dataclass
class DistillRunConfig:
    """``[train]``: steps, batch, device."""

    output_dir: str = _f("outputs/distill", "Run directory: metrics.jsonl, checkpoints/, export/.")
    steps: int = _f(
        2000,
        "Training iterations; every iteration updates the critic once and every `critic_ratio`-th (from 0) also "
        "the generator.",
    )
    batch_size: int = _f(1, "Samples (prompts) per iteration.")
    seed: int = _f(
        0,
        "Seed; all draws of an iteration (prompts, rolled-out step, noise, score levels) depend only on (seed, "
        "iteration, global sample slot), so a resumed run continues bit-exactly.",
    )
    gradient_checkpointing: bool = _f(
        True,
        "Recompute the transformer blocks of the student, the critic and the discriminator backbone in the "
        "backward pass.",
    )
    device: str = _f("auto", "`auto` (cuda:LOCAL_RANK when CUDA is available, else cpu), `cpu` or `cuda`.")
    precision: str = _f(
        "auto",
        "`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16` (autocast of the roll-outs, scores and "
        "losses; weights, optimizer states and gradients stay fp32 master copies).",
    )
    parallel: str = _f(
        "none",
        "`none`, `ddp` or `fsdp`: data parallel over processes launched with torchrun (gloo on CPU, nccl on CUDA) "
        "with global batch world_size * batch_size; every sample draws from (seed, iteration, global slot rank * "
        "batch_size + b) and the rolled-out step is shared, so runs with the same global batch match for any world "
        "size, and the logged losses are global means. `ddp`: full replicas, the gradients of the generator and "
        "the critic are averaged over the ranks before clipping. `fsdp`: every model (student, critic, frozen "
        "teachers) is built on the meta device, FSDP2-sharded per transformer block (LoRA adapters in their "
        "block's group) and at its root (PPF: the PPF wrapper) and read or initialised shard by shard; frozen "
        "teachers are bf16 when the run is. A finetuned teacher (dmd-ot, ppf) trains sharded (ddp: broadcast "
        "from rank 0); "
        "checkpoints are sharded (DCP: every rank writes its shards; they resume at any world size), the export "
        "is gathered to rank 0, which writes it and the metrics.",
    )
    collective_timeout: float = _collective_timeout_field()
    log_every: int = _f(1, "Append a metrics line to metrics.jsonl every this many iterations.")
    progress: bool = _f(True, "Show a tqdm progress bar.")


@dataclass
class DistillConfig(RunConfig):
    """The whole configuration of ``python -m pyrflow_fast.distill`` (pyrflow-distill)."""

    model: DistillModelConfig = field(default_factory=DistillModelConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    train: DistillRunConfig = field(default_factory=DistillRunConfig)

    @property
    def method(self) -> str:
        """The training method's name in :data:`pyrflow_fast.train.methods.METHODS`: the variant."""
        return self.distill.variant

    def validate(self) -> None:
        """Raise ValueError on inconsistent values (names the field)."""
        d = self.distill
        if d.variant not in VARIANTS:
            raise ValueError(
                f"invalid config: unknown distillation variant {d.variant!r}; expected one of {', '.join(VARIANTS)}"
            )
        try:
            steps = parse_schedule(d.schedule, self.pyramid.num_stages)
            parse_schedule(d.regression_schedule, self.pyramid.num_stages)
        except ValueError as err:
            raise ValueError(
                "invalid config: distill.schedule / distill.regression_schedule do not fit the model's "
                f"{self.pyramid.num_stages} pyramid stages: {err}"
            ) from None
        raise_first(
            [
                (sum(steps) >= 1, "distill.schedule must take at least one step"),
                (
                    d.sigma_min >= 0 and d.sigma_min < d.sigma_max <= 1,
                    "need 0 <= distill.sigma_min < distill.sigma_max <= 1",
                ),
                (
                    min(d.score_shift, d.sample_shift, d.teacher_finetune_shift) > 0,
                    "distill.score_shift, distill.sample_shift and distill.teacher_finetune_shift must be > 0",
                ),
                (d.critic_ratio >= 1, "distill.critic_ratio must be >= 1"),
                (d.regression_weight >= 0, "distill.regression_weight must be >= 0"),
                (d.band_norm in ("low", "none"), "distill.band_norm must be 'low' or 'none'"),
                (d.lora_rank >= 0, "distill.lora_rank must be >= 0"),
                (
                    d.critic_lr >= 0 and d.teacher_finetune_lr > 0,
                    "distill.critic_lr must be >= 0 and distill.teacher_finetune_lr > 0",
                ),
                (d.teacher_finetune_steps >= 0, "distill.teacher_finetune_steps must be >= 0"),
                (d.disc_hidden >= 1, "distill.disc_hidden must be >= 1"),
                (
                    min(d.adv_weight, d.rec_weight, d.dmd_weight) >= 0,
                    "distill.adv_weight, distill.rec_weight and distill.dmd_weight must be >= 0",
                ),
                (
                    d.variant != "ppf" or len(d.ppf_patches) == self.pyramid.num_stages,
                    f"distill.ppf_patches must have one patch per pyramid stage ({self.pyramid.num_stages}), got "
                    f"{list(d.ppf_patches)}",
                ),
                (self.model.rope in ("integer", "scaled"), "model.rope must be 'integer' or 'scaled'"),
                (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            ]
        )
        super().validate()


def load_distill_config(path: str | Path) -> DistillConfig:
    """Read a ``.json`` or ``.toml`` distillation config file."""
    return load_config(path, DistillConfig)
