r"""End-to-end CPU evidence that pyramidal finetuning works: ``python -m pyrflow_fast.train.evidence``.

1. *Conventional training*: a ``tiny`` WanDiT learns the synthetic latent videos
   (:mod:`pyrflow_fast.train.synthetic`, 5x16x16 latents, 4 text classes) with plain flow
   matching (``S = 1``, Wan's loss).
2. *Pyramidal finetune*: the trainer finetunes it with the 3-stage pyramidal loss (Haar 2x2x2,
   Wan's default boundaries 5/9 and 15/17), starting from the exported base checkpoint, once per
   ``loss.weighting`` (``sigma``: the MSE of dx/dsigma; ``natural``: of the natural velocity).
3. *Control*: the same base trained for the same number of extra steps with the plain loss.

Measured before and after:

- the **pyramidal validation loss**: a fixed, seeded validation set of ``(sample, stage, rho,
  eps)`` (held-out videos, every sample at every stage);
- a **sample metric**: videos are generated with the pyramidal Euler sampler (``10-10-10``, one
  per class in turn, no CFG) and compared with held-out videos by a Fréchet distance between
  Gaussians fitted to per-video features (per-channel mean and standard deviation, log power in
  five radial spatial-frequency bands, log frame-difference energy). Lower is better; held-out
  data against itself (another split) gives the noise floor.

>>> f = features(torch.zeros(2, 4, 5, 16, 16))
>>> tuple(f.shape)
(2, 14)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pyrflow_ref.plan import Plan
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

from ..contract import BackboneDenoiser, WanBackbone
from ..resample import Pyramid
from ..samplers import sample_euler
from ..wan import WanDiT
from ..wan.checkpoint import load_wan
from .config import TrainConfig, synthetic_run
from .loss import PyramidalLoss, draw
from .runner import Runner
from .synthetic import SyntheticPyramids

__all__ = ["features", "frechet_distance", "main", "run", "sample_metric", "validation_loss"]

SIZE = (5, 16, 16)


def features(latents: torch.Tensor) -> torch.Tensor:
    """Per-video features ``(B, 14)`` of natural-scale latents ``(B, C, F, H, W)`` (C = 4)."""
    x = latents.double()
    mean = x.mean(dim=(2, 3, 4))
    std = x.std(dim=(2, 3, 4))
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2).mean(dim=(1, 2))  # (B, H, W)
    ky = torch.fft.fftfreq(h, 1 / h).abs()[:, None]
    kx = torch.fft.fftfreq(w, 1 / w).abs()[None, :]
    radius = torch.sqrt(ky**2 + kx**2)
    edges = [0, 1, 2, 3, 5, 1e9]
    bands = [power[:, (radius >= lo) & (radius < hi)].mean(dim=1) for lo, hi in zip(edges[:-1], edges[1:])]
    spectrum = torch.log(torch.stack(bands, dim=1) + 1e-6)
    motion = torch.log((x[:, :, 1:] - x[:, :, :-1]).pow(2).mean(dim=(1, 2, 3, 4)) + 1e-6)[:, None]
    return torch.cat([mean, std, spectrum, motion], dim=1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace of sqrt(ca cb) via the symmetric form sqrt(ca)^T cb sqrt(ca)
    wa, va = np.linalg.eigh(ca)
    sa = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = sa @ cb @ sa
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr)


@torch.no_grad()
def validation_loss(
    model: WanDiT, data: SyntheticPyramids, pyramid: Pyramid, windows: StageWindows, seed: int = 12345
) -> dict:
    """Pyramidal loss on every (sample, stage) of ``data`` with fixed draws: total and per stage."""
    loss = PyramidalLoss(pyramid, windows)
    s = pyramid.num_stages
    items, stages, draws = [], [], []
    for n in range(len(data)):
        item = data[n]
        for i in range(s):
            items.append(item)
            stages.append(i)
            draws.append(draw(seed, 0, n * s + i, tuple(item["x0s"][i].shape)))
    total, groups = loss.batch_loss(BackboneDenoiser(WanBackbone(model.eval())), items, stages, draws)
    return {"total": float(total), **{f"stage{g.stage}": float(g.mse.mean()) for g in groups}}


@torch.no_grad()
def sample_metric(
    model: WanDiT,
    contexts: torch.Tensor,
    reference: torch.Tensor,
    pyramid: Pyramid,
    windows: StageWindows,
    schedule: str,
    num: int = 128,
    seed: int = 999,
) -> float:
    """Fréchet feature distance between ``num`` generated videos and the ``reference`` latents."""
    labels = torch.arange(num) % contexts.shape[0]
    cond = contexts[labels]
    plan = Plan.build(schedule, pyramid, windows)
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(pyramid.shapes((num, reference.shape[1], *SIZE))[plan.top], generator=rng)
    out = sample_euler(BackboneDenoiser(WanBackbone(model.eval())), noise, pyramid, windows, plan, cond=cond, rng=rng)
    return frechet_distance(features(out), features(reference))


@contextlib.contextmanager
def run_dir(out_dir: str | Path | None) -> Iterator[Path]:
    """``out_dir`` (the evidence runs keep their runs there), or a temporary directory removed afterwards."""
    if out_dir is not None:
        yield Path(out_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def parse_evidence_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Add the flags every evidence run has (``--out-dir``, ``--json``), parse ``argv`` and seed torch.

    Every other flag's ``dest`` is a keyword of the evidence ``run`` (:func:`run_options`)."""
    ap.add_argument("--out-dir", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    return args


def run_options(args: argparse.Namespace) -> dict:
    """The parsed flags as the evidence ``run``'s keywords (all but ``--json``)."""
    return {k: v for k, v in vars(args).items() if k != "json"}


def finish_evidence(res: dict, args: argparse.Namespace) -> int:
    """The end every evidence run prints: the total time and, with ``--json``, the numbers; exit code 0."""
    print(f"total {res['seconds']:.1f} s")
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


def _config(
    out: Path, name: str, *, stages: int, steps: int, lr: float, path: str = "", seed: int = 0, weighting: str = "sigma"
) -> TrainConfig:
    return synthetic_run(
        out / name,
        model={"path": path},
        pyramid={"num_stages": stages, "boundaries": list(WAN_DEFAULT_BOUNDARIES)[: stages - 1]},
        loss={"weighting": weighting},
        optim={"lr": lr, "warmup_steps": min(50, steps // 5), "weight_decay": 0.0},
        train={"steps": steps, "samples_per_stage": 6 // stages, "seed": seed},
        checkpoint={"every": steps, "keep_last": 1},
    )


def run(
    pretrain_steps: int = 1200,
    finetune_steps: int = 500,
    *,
    lr: float = 2e-3,
    finetune_lr: float = 5e-4,
    num_generated: int = 64,
    weightings: tuple[str, ...] = ("sigma", "natural"),
    samples: bool = True,
    control: bool = True,
    out_dir: str | Path | None = None,
    log=print,
) -> dict:
    """Run the whole experiment; returns the measured numbers (see the module docstring)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with run_dir(out_dir) as out:
        pyramid = Pyramid.uniform("haar", (2, 2, 2), 3, first_frame=True)
        windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
        train = SyntheticPyramids(256, pyramid, size=SIZE, split_seed=0)
        val = SyntheticPyramids(32, pyramid, size=SIZE, split_seed=1)
        held = SyntheticPyramids(256, pyramid, size=SIZE, split_seed=2)
        results: dict = {
            "pretrain_steps": pretrain_steps,
            "finetune_steps": finetune_steps,
            "lr": lr,
            "finetune_lr": finetune_lr,
            "num_generated": num_generated,
            "weightings": list(weightings),
        }
        if samples:
            floor_data = SyntheticPyramids(num_generated, pyramid, size=SIZE, split_seed=3).latents
            results["fd_data_floor"] = frechet_distance(features(floor_data), features(held.latents))
        start = time.perf_counter()

        def measure(tag: str, model: WanDiT) -> None:
            results[f"{tag}_val"] = validation_loss(model, val, pyramid, windows)
            line = f"[{time.perf_counter() - start:6.1f} s] {tag}: "
            line += f"pyramidal val loss {results[f'{tag}_val']['total']:.4f} "
            line += f"{ {k: round(v, 4) for k, v in results[f'{tag}_val'].items() if k != 'total'} }"
            if samples:
                results[f"{tag}_fd_pyramidal"] = sample_metric(
                    model, train.contexts, held.latents, pyramid, windows, "10-10-10", num_generated
                )
                line += f", FD(pyramidal 10-10-10) {results[f'{tag}_fd_pyramidal']:.4f}"
            log(line)

        base_trainer = Runner(_config(out, "base", stages=1, steps=pretrain_steps, lr=lr), dataset=train)
        base_trainer.fit()
        base = load_wan(out / "base" / "export")
        if samples:
            results["base_fd_plain"] = sample_metric(
                base, train.contexts, held.latents, pyramid, windows, "0-0-30", num_generated
            )
            log(f"[{time.perf_counter() - start:6.1f} s] base: FD(plain 0-0-30) {results['base_fd_plain']:.4f}")
        measure("base", base)

        for weighting in weightings:
            tag = f"pyramidal_{weighting}"
            config = _config(
                out,
                tag,
                stages=3,
                steps=finetune_steps,
                lr=finetune_lr,
                path=str(out / "base" / "export"),
                weighting=weighting,
            )
            Runner(config, dataset=train).fit()
            measure(tag, load_wan(out / tag / "export"))

        if control:
            base_path = str(out / "base" / "export")
            ctrl = Runner(
                _config(out, "control", stages=1, steps=finetune_steps, lr=finetune_lr, path=base_path), dataset=train
            )
            ctrl.fit()
            measure("control", load_wan(out / "control" / "export"))
        results["seconds"] = time.perf_counter() - start
        return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyrflow_fast.train.evidence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--finetune-steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of the conventional training")
    ap.add_argument("--finetune-lr", type=float, default=5e-4, help="learning rate of the finetunes and the control")
    ap.add_argument("--num-generated", type=int, default=64)
    ap.add_argument(
        "--weighting",
        dest="weightings",
        choices=("sigma", "natural"),
        action="append",
        help="loss.weighting of a pyramidal finetune (repeatable; default: both)",
    )
    args = parse_evidence_args(ap, argv)
    res = run(**{**run_options(args), "weightings": tuple(args.weightings or ("sigma", "natural"))})
    print(f"data floor FD (held-out vs held-out): {res['fd_data_floor']:.4f}")
    print(f"base (plain FM, {res['pretrain_steps']} steps): FD plain 0-0-30 {res['base_fd_plain']:.4f}")
    for tag in ["base", *(f"pyramidal_{w}" for w in res["weightings"]), "control"]:
        v = res[f"{tag}_val"]
        stages = " ".join(f"{v[f'stage{i}']:.4f}" for i in range(3))
        print(
            f"{tag:>17}: pyramidal val loss {v['total']:.4f} (stages 0/1/2: {stages})  "
            f"FD pyramidal 10-10-10 {res[f'{tag}_fd_pyramidal']:.4f}"
        )
    return finish_evidence(res, args)


if __name__ == "__main__":
    sys.exit(main())
