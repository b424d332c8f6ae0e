r"""Pyramidal patchification (PPF): larger patches on the full-resolution latent at the noisier stages.

PPF (theory §4; Pyramidal Patchification Flow, arXiv 2506.23543) never resamples the latent.
Stage :math:`l` patchifies the full-resolution latent ``(B, C, F, H, W)`` with its own patch
:math:`p_l` (default :data:`DEFAULT_PATCHES`: ``(1,2,2)``, ``(1,4,4)``, ``(1,8,8)``), so the shared
transformer blocks see :math:`F \cdot \frac{H}{2 \cdot 2^l} \cdot \frac{W}{2 \cdot 2^l}` tokens.
Each stage has its own patch embedding and output projection and a learned stage embedding
added to the time conditioning; everything else is the wrapped :class:`~pyrflow_fast.wan.WanDiT`.

Initialisation from the pretrained stage-0 layers (PPF's ``initialize_layer_weights``), with
:math:`r = p_l / p_0` per axis and :math:`|r| = r_t r_h r_w` pixels per *sub-patch*:

.. math::

    W^{emb}_l[\,\cdot\,, r \odot i + a] = \frac{1}{|r|} W^{emb}_0[\,\cdot\,, i], \qquad
    W^{head}_l[(r \odot i + a, c), \cdot\,] = W^{head}_0[(i, c), \cdot\,]

for every kernel tap :math:`i` of the fine patch and offset :math:`a` inside a sub-patch (biases
copied). So the coarse embedding is the fine embedding of the sub-patch-averaged (``avgpool`` by
:math:`r`) input, and the coarse head writes each fine output value to all pixels of its
sub-patch. With the stage embedding at zero and RoPE positions at the cell centres of the fine
token grid (:mod:`pyrflow_fast.wan.rope`'s ``scaled`` mode), stage :math:`l` at initialisation is
exactly "the pretrained model on the :math:`r`-average-pooled latent, output nearest-upsampled"
(tested), and stage 0 is exactly the pretrained model.

FLOPs: a stage-:math:`l` forward is a Wan forward with patch :math:`p_l` on the full latent, so
:func:`ppf_forward_flops` is :func:`pyrflow_fast.flops.forward_flops` with ``patch_size = p_l``
(patch embedding :math:`2 N_l C |p_l| d`, head :math:`2 N_l d C_{out} |p_l|`, blocks on
:math:`N_l` tokens). Run ``python -m pyrflow_fast.ppf`` to compare PPF schedules with the
resolution pyramid on Wan2.1-T2V-1.3B.

Sampling: PPF runs the plain process :math:`x = (1 - \sigma) x_0 + \sigma \epsilon` on the full
latent; stage :math:`l` serves the noise levels of window :math:`l` of a
:class:`~pyrflow_ref.windows.StageWindows` (no transitions, no re-noising at boundaries).
:func:`sample_ppf` runs a schedule such as ``"20-20-10"`` (Euler) or ``"2-2-1"`` (few-step
x0 prediction) through the samplers of :mod:`pyrflow_fast.samplers` with one model per stage
(:func:`ppf_stages`) and no pyramid; :class:`pyrflow_fast.contract.PPFDenoiser` is the denoiser
with the stage chosen from the timestep, e.g. as a DMD teacher or critic with
:meth:`pyrflow_fast.process.StageProcess.plain`.

>>> from pyrflow_fast.wan import WanDiT
>>> ppf = PPFWan(WanDiT("tiny"))
>>> ppf.num_stages, ppf.patches[2], tuple(ppf.patch_embeddings[1].weight.shape)
(3, (1, 8, 8), (32, 4, 1, 4, 4))
>>> ppf_forward_flops("wan2.1-t2v-1.3b", (21, 56, 104), 1).tokens
7644
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch
from torch import nn

from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import StageWindows

from .contract import Denoiser, check_ppf_windows, frame_timesteps
from .flops import PAPER_STAGES, FlopsBreakdown, forward_flops, latent_size, schedule_flops
from .samplers import guided, sample_euler, sample_few_step
from .wan.config import WanConfig, get_config
from .wan.rope import rope_tables

__all__ = [
    "DEFAULT_PATCHES",
    "PAPER_LATENCY_MS",
    "PPFStage",
    "PPFWan",
    "main",
    "ppf_forward_flops",
    "ppf_stages",
    "ppf_schedule_flops",
    "sample_ppf",
    "subpatch_factors",
]

DEFAULT_PATCHES: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 4, 4), (1, 8, 8))
"""Patch per stage, finest (stage 0, the pretrained patch) first."""

PAPER_LATENCY_MS: dict[str, float] = {"full_forward": 631.77, "pyramid_2-2-1": 714.5, "ppf_2-2-1": 810.0}
"""The paper's latencies (theory §6): one full-resolution forward, pyramidal and PPF 2-2-1."""


def subpatch_factors(patch: Sequence[int], base: Sequence[int]) -> tuple[int, int, int]:
    """Per-axis factor ``patch / base`` (ValueError unless every axis divides).

    >>> subpatch_factors((1, 8, 8), (1, 2, 2))
    (1, 4, 4)
    """
    if len(patch) != 3 or any(p % b or p < b for p, b in zip(patch, base, strict=True)):
        raise ValueError(f"patch {tuple(patch)} is not a multiple of the base patch {tuple(base)} on every axis")
    return tuple(p // b for p, b in zip(patch, base, strict=True))


def _check_patches(patches: Sequence[Sequence[int]], base: Sequence[int]) -> tuple[tuple[int, int, int], ...]:
    out = tuple(tuple(int(v) for v in p) for p in patches)
    if not out or out[0] != tuple(base):
        raise ValueError(f"stage 0 must use the pretrained patch {tuple(base)}, got {out[:1]}")
    for p in out:
        if p[0] != base[0]:
            raise ValueError(f"PPF stages keep the temporal patch {base[0]} (per-frame timesteps), got {p}")
        subpatch_factors(p, base)
    return out


class PPFWan(nn.Module):
    """A :class:`~pyrflow_fast.wan.WanDiT` with one patch embedding, head projection and stage embedding per stage.

    ``ppf(x, t, context, stage)`` maps a full-resolution latent ``x`` ``(B, C, F, H, W)``,
    timesteps ``t`` (a number, ``(B,)`` or per frame ``(B, F)``) and text ``(B, L, text_dim)`` to the
    velocity ``(B, C_out, F, H, W)`` (float32). Stage 0 uses the wrapped model's own
    ``patch_embedding`` and ``head.head``; stages ``l >= 1`` use ``patch_embeddings[l]`` and
    ``heads[l]`` (initialised from them, see the module docstring). ``stage_embedding`` ``(L, dim)``
    starts at zero. The blocks, the text and time MLPs and the head's modulation are shared.

    :param model: the pretrained transformer (shared, not copied).
    :param patches: patch per stage, finest first; stage 0 must be the model's patch, temporal
        patches must equal it.
    """

    def __init__(self, model: nn.Module, patches: Sequence[Sequence[int]] = DEFAULT_PATCHES) -> None:
        super().__init__()
        cfg = model.config
        self.model = model
        self.patches = _check_patches(patches, cfg.patch_size)
        self.patch_embeddings = nn.ModuleList([nn.Identity()])
        self.heads = nn.ModuleList([nn.Identity()])
        emb0, head0 = model.patch_embedding, model.head.head
        for p in self.patches[1:]:
            r = subpatch_factors(p, cfg.patch_size)
            conv = nn.Conv3d(
                cfg.in_dim, cfg.dim, kernel_size=p, stride=p, device=emb0.weight.device, dtype=emb0.weight.dtype
            )
            lin = nn.Linear(
                cfg.dim, cfg.out_dim * p[0] * p[1] * p[2], device=head0.weight.device, dtype=head0.weight.dtype
            )
            self.patch_embeddings.append(conv)
            self.heads.append(lin)
            self._init_stage(conv, lin, emb0, head0, r)
        self.stage_embedding = nn.Parameter(torch.zeros(len(self.patches), cfg.dim, device=emb0.weight.device))

    @property
    def num_stages(self) -> int:
        return len(self.patches)

    @property
    def config(self) -> WanConfig:
        return self.model.config

    @torch.no_grad()
    def _init_stage(self, conv: nn.Conv3d, lin: nn.Linear, emb0: nn.Conv3d, head0: nn.Linear, r) -> None:
        """Embedding averaged over each sub-patch, head copied to each pixel of its sub-patch."""
        w = emb0.weight  # (dim, C, pt, ph, pw)
        for axis, k in zip((2, 3, 4), r, strict=True):
            w = w.repeat_interleave(k, dim=axis)
        conv.weight.copy_(w / (r[0] * r[1] * r[2]))
        conv.bias.copy_(emb0.bias)
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        hw = head0.weight.reshape(pt, ph, pw, c, -1)  # rows ordered (pt, ph, pw, C), C fastest
        hb = head0.bias.reshape(pt, ph, pw, c)
        for axis, k in zip((0, 1, 2), r, strict=True):
            hw = hw.repeat_interleave(k, dim=axis)
            hb = hb.repeat_interleave(k, dim=axis)
        lin.weight.copy_(hw.reshape(-1, hw.shape[-1]))
        lin.bias.copy_(hb.reshape(-1))

    def _check_stage(self, stage: int) -> int:
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} out of range for {self.num_stages} stages")
        return stage

    def grid(self, size: Sequence[int], stage: int) -> tuple[int, int, int]:
        """Token grid ``(F', H', W')`` of a full-resolution latent of ``size`` at ``stage``."""
        p = self.patches[self._check_stage(stage)]
        if any(n % q for n, q in zip(size, p, strict=True)):
            raise ValueError(f"latent size {tuple(size)} is not divisible by stage {stage}'s patch {p}")
        return tuple(n // q for n, q in zip(size, p, strict=True))

    def rope_tables(self, size: Sequence[int], stage: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin of ``stage``'s grid; positions at the cell centres of the stage-0 token grid."""
        grid = self.grid(size, stage)
        fine = None if stage == 0 else self.grid(size, 0)
        cfg = self.config
        return rope_tables(grid, cfg.head_dim, cfg.rope_theta, fine, cfg.rope_max_positions, device=device)

    def embed_time(self, t: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``WanDiT.embed_time`` with the stage embedding added to ``e`` before the projection to ``e0``."""
        return self.model.embed_time(t, offset=self.stage_embedding[stage])

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor, stage: int = 0) -> torch.Tensor:
        """Velocity of the full-resolution latent ``x`` at ``stage`` (float32; ``x``'s shape, ``out_dim`` channels)."""
        cfg, m = self.config, self.model
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be (B, {cfg.in_dim}, F, H, W), got {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        grid = self.grid((f, h, w), stage)
        p = self.patches[stage]
        t = frame_timesteps(t, b, grid[0], x.device)

        cos, sin = self.rope_tables((f, h, w), stage, device=x.device)
        e, e0 = self.embed_time(t, stage)
        if stage == 0:
            return m.predict(x, context, e, e0, cos, sin, p)
        return m.predict(x, context, e, e0, cos, sin, p, embed=self.patch_embeddings[stage], head=self.heads[stage])


# --------------------------------------------------------------------------------- sampling
class PPFStage:
    """One stage of a :class:`PPFWan` as a :class:`~pyrflow_fast.contract.Denoiser` ``model(x, t, context) -> v``.

    The samplers run PPF with one of these per stage (``pyramid=None``, finest first): every step
    of stage ``l`` runs stage ``l``, boundary noise levels included (unlike
    :class:`~pyrflow_fast.contract.PPFDenoiser`, which gives a boundary to the finer stage).
    """

    def __init__(self, ppf: PPFWan, stage: int) -> None:
        if not 0 <= stage < ppf.num_stages:
            raise ValueError(f"stage {stage} out of range for {ppf.num_stages} stages")
        self.ppf = ppf
        self.stage = stage

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.ppf(x, t, context, stage=self.stage)


def ppf_stages(ppf: PPFWan, guidance: float = 1.0, uncond: torch.Tensor | None = None) -> list[Denoiser]:
    """The samplers' per-stage models of ``ppf`` (finest first), guided when ``guidance != 1``."""
    stages = [PPFStage(ppf, i) for i in range(ppf.num_stages)]
    return stages if guidance == 1.0 else [guided(m, guidance, uncond) for m in stages]


def sample_ppf(
    ppf: PPFWan,
    noise: torch.Tensor,
    context: torch.Tensor,
    windows: StageWindows,
    steps: str | Sequence[int] | Plan,
    *,
    shift: float = 1.0,
    few_step: bool = False,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Sample with a PPF schedule (steps per stage, coarsest first; only the coarsest stages may take 0).

    :func:`~pyrflow_fast.samplers.sample_euler` or, with ``few_step``,
    :func:`~pyrflow_fast.samplers.sample_few_step` over :func:`ppf_stages` without a pyramid: stage
    ``l`` takes ``n_l`` steps on its window's grid (shifted by ``shift``; a skipped coarse window
    joins the next finer one), on the full-resolution latent ``noise`` ``(B, C, F, H, W)``.
    Euler steps :math:`x \mathrel{+}= (s' - s) v`; a few-step evaluation predicts
    :math:`x_0 = x - s v` and re-noises it to the next stage, :math:`(1 - s') x_0 + s' \epsilon`
    (fresh noise from ``rng``), returning the last :math:`x_0`. ``guidance != 1`` applies
    :func:`~pyrflow_fast.samplers.guided` with the ``uncond`` context. ``ppf`` may be a
    :class:`~pyrflow_fast.parallel.ContextParallelWan` wrapping a :class:`PPFWan` (multi-GPU sampling).
    """
    check_ppf_windows(ppf, windows)
    models = ppf_stages(ppf, guidance, uncond)
    if few_step:
        return sample_few_step(models, noise, None, windows, steps, cond=context, shift=shift, rng=rng)
    return sample_euler(models, noise, None, windows, steps, cond=context, shift=shift)


# ------------------------------------------------------------------------------------ FLOPs
def ppf_forward_flops(
    config: WanConfig | str,
    size: Sequence[int],
    stage: int,
    patches: Sequence[Sequence[int]] = DEFAULT_PATCHES,
    batch: int = 1,
    text_len: int | None = None,
) -> FlopsBreakdown:
    """FLOPs of one :class:`PPFWan` forward at ``stage`` on a full-resolution latent ``(F, H, W)``.

    It is :func:`pyrflow_fast.flops.forward_flops` with the stage's patch: tokens
    ``F/pt * H/ph * W/pw`` (``F * H/(2 * 2^l) * W/(2 * 2^l)`` for the default patches), patch
    embedding and head priced with the larger patch. The stage-embedding add is elementwise
    (not counted, like every bias).
    """
    cfg = get_config(config)
    pats = _check_patches(patches, cfg.patch_size)
    if not 0 <= stage < len(pats):
        raise ValueError(f"stage {stage} out of range for {len(pats)} stages")
    return forward_flops(cfg.replace(patch_size=pats[stage]), size, batch=batch, text_len=text_len)


def ppf_schedule_flops(
    schedule: str | Sequence[int],
    config: WanConfig | str,
    size: Sequence[int],
    patches: Sequence[Sequence[int]] = DEFAULT_PATCHES,
    forwards_per_step: int = 1,
) -> float:
    """FLOPs of a PPF schedule (steps per stage, coarsest first, e.g. ``"2-2-1"``) on a latent ``(F, H, W)``.

    >>> a = ppf_schedule_flops("0-0-1", "tiny", (1, 8, 8))
    >>> a == ppf_forward_flops("tiny", (1, 8, 8), 0).total
    True
    """
    per_stage = [ppf_forward_flops(config, size, i, patches).total for i in range(len(patches))]
    return schedule_flops(schedule, per_stage, forwards_per_step=forwards_per_step)


def _comparison(config: str = "wan2.1-t2v-1.3b") -> dict:
    """PPF 2-2-1 against the resolution pyramid's 2-2-1 and plain 0-0-2 (TFLOPs and implied latency)."""
    full = latent_size(PAPER_STAGES[0])
    pyramid = [forward_flops(config, latent_size(p)).total for p in PAPER_STAGES]
    ppf = [ppf_forward_flops(config, full, i).total for i in range(len(DEFAULT_PATCHES))]
    ms_per_flop = PAPER_LATENCY_MS["full_forward"] / pyramid[0]  # the paper's full forward calibrates the rate
    rows = {
        "ppf 2-2-1": schedule_flops("2-2-1", ppf),
        "pyramid 2-2-1": schedule_flops("2-2-1", pyramid),
        "plain 0-0-2": schedule_flops("0-0-2", pyramid),
    }
    return {
        "config": config,
        "latent": list(full),
        "ppf_tokens": [ppf_forward_flops(config, full, i).tokens for i in range(len(DEFAULT_PATCHES))],
        "ppf_tflops_per_forward": [c / 1e12 for c in ppf],
        "pyramid_tflops_per_forward": [c / 1e12 for c in pyramid],
        "schedules": {k: {"tflops": v / 1e12, "latency_ms": v * ms_per_flop} for k, v in rows.items()},
        "paper_latency_ms": {
            "ppf 2-2-1": PAPER_LATENCY_MS["ppf_2-2-1"],
            "pyramid 2-2-1": PAPER_LATENCY_MS["pyramid_2-2-1"],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyrflow_fast.ppf``: PPF 2-2-1 vs pyramidal 2-2-1 and 0-0-2."""
    parser = argparse.ArgumentParser(prog="python -m pyrflow_fast.ppf", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    rep = _comparison()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"{rep['config']}, latent {'x'.join(map(str, rep['latent']))}, patches {DEFAULT_PATCHES}")
    print(f"PPF tokens per stage: {rep['ppf_tokens']}")
    print(
        "TFLOPs per forward, stage/stage 0..2: PPF "
        + ", ".join(f"{v:.2f}" for v in rep["ppf_tflops_per_forward"])
        + "; pyramid "
        + ", ".join(f"{v:.2f}" for v in rep["pyramid_tflops_per_forward"])
    )
    print(f"{'schedule':>14}  {'TFLOPs':>8}  {'ms (paper rate)':>15}  {'paper ms':>8}")
    for name, row in rep["schedules"].items():
        paper = rep["paper_latency_ms"].get(name)
        print(
            f"{name:>14}  {row['tflops']:>8.1f}  {row['latency_ms']:>15.1f}  "
            f"{'-' if paper is None else f'{paper:.1f}':>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
