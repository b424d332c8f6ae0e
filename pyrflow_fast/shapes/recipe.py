r"""Reproduce the shipped shapes checkpoints from scratch: ``python -m pyrflow_fast.shapes.recipe``.

Every step is one of the project's command-line tools, run as a subprocess (the commands are
printed and written to the model card):

1. ``python -m pyrflow_fast.shapes.data`` writes the training split (seed 0) as lossless clips
   with captions; :func:`~pyrflow_fast.shapes.components.write_components` writes the frozen
   tokenizer, text encoder and pixel space;
2. ``pyrflow-cache`` encodes it twice into latent caches (pixel space: the normalised pixels): the
   first frame of every clip (``cache-image``) and its first ``Recipe.frames`` frames (``cache``: 5 of
   the 9, where direction is learnt at a third of the time; ``docs/shapes.md``);
3. ``pyrflow-train`` trains the ``shapes`` WanDiT **conventionally** (``pyramid.num_stages = 1``:
   Wan's flow-matching loss) from random initialisation on single frames (``image``: colour and
   shape, 5x cheaper per sample than clips), then finetunes it on the clips (``conventional``:
   motion), with 10% all-zero contexts for CFG and noise levels shifted as sampling shifts them;
4. ``pyrflow-train`` finetunes it **pyramidally** (3 stages, Haar 2x2x2, Wan's boundaries,
   ``loss.weighting = "natural"``);
5. ``pyrflow-distill`` distils the pyramidal model with DMD (``dmd-pt*``) to ``2-2-1``;
6. ``pyrflow-distill`` distils the conventional model with DMD (``dmd-ot``, the conventional
   model as teacher, plain re-noising) to ``0-0-2`` at full resolution: the baseline of the table;
7. the four transformers are assembled with the frozen components into complete model
   directories (:data:`pyrflow_fast.shapes.MODELS`) with their ``pyrflow.json`` cards.

``--preset quick`` runs every step with a handful of optimizer steps (tests); ``--preset gpu`` runs the
same curriculum on one CUDA GPU in bf16 with 4x the batches. The defaults are the
image-first curriculum of ``docs/shapes.md`` that made the shipped checkpoints (their ``recipe.json``
records the commands and times).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, parse_schedule

from ..card import ModelCard
from ..wan.checkpoint import load_wan, save_wan
from . import MODELS, SHIPPED
from .components import TEXT_LEN, write_components, write_embeddings
from .data import FPS, SIZE, SIZE_RANGE, SPEED_RANGE

__all__ = ["GPU", "PRESETS", "QUICK", "STEPS", "Recipe", "main", "override", "run"]

GUIDANCE = 2.0  # CFG of the cards and the distillation teachers: subject consistency falls as it grows (docs/shapes.md)
#: The recipe's steps in order; ``--steps`` runs a subset in an existing working folder.
STEPS = ("data", "image", "conventional", "pyramidal", "distilled", "distilled-plain")


@dataclass(frozen=True)
class Recipe:
    """Sizes and steps of the recipe (the defaults are the shipped one)."""

    videos: int = 20_000
    size_range: tuple[float, float] = SIZE_RANGE
    speed_range: tuple[float, float] = SPEED_RANGE
    image_steps: int = 5500
    image_batch: int = 32
    #: the clip phases train on the first ``frames`` of the data's 9: direction at a third of the time of 9
    frames: int = 5
    conventional_steps: int = 4400
    conventional_batch: int = 16
    conventional_lr: float = 1e-3
    #: the noise-level shift of training, distillation and the cards (sampling's default)
    sigma_shift: float = 3.0
    pyramidal_steps: int = 2400
    pyramidal_per_stage: int = 8
    pyramidal_lr: float = 3e-4
    distill_steps: int = 500
    distill_batch: int = 8
    distill_lr: float = 2e-4
    guidance: float = GUIDANCE
    seed: int = 0
    #: where every training and distillation step runs, and its precision (``train.precision``)
    device: str = "cpu"
    precision: str = "fp32"


QUICK = Recipe(
    videos=24,
    image_steps=3,
    image_batch=2,
    conventional_steps=3,
    conventional_batch=2,
    pyramidal_steps=2,
    pyramidal_per_stage=1,
    distill_steps=2,
    distill_batch=1,
)
#: ``--preset gpu``: the same curriculum on one CUDA GPU in bf16 with 4x the batches (the same steps, so each
#: phase sees 4x the samples); not yet run on a GPU
GPU = replace(
    Recipe(),
    device="cuda",
    precision="bf16",
    image_batch=4 * Recipe.image_batch,
    conventional_batch=4 * Recipe.conventional_batch,
    pyramidal_per_stage=4 * Recipe.pyramidal_per_stage,
    distill_batch=4 * Recipe.distill_batch,
)
PRESETS = {"cpu": Recipe(), "gpu": GPU, "quick": QUICK}


def override(r: Recipe, items: list[str]) -> Recipe:
    """``r`` with ``field=value`` items applied (``--set``; a range as ``lo,hi``).

    >>> override(QUICK, ["distill_steps=7", "size_range=10,12"]).distill_steps
    7
    """
    names = {f.name for f in fields(Recipe)}
    changes = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in names:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        old = getattr(r, key)
        try:
            changes[key] = tuple(float(v) for v in value.split(",")) if isinstance(old, tuple) else type(old)(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} expects {type(old).__name__}, like {old!r}") from None
    return replace(r, **changes)


def _common(cache: Path, frames: int) -> dict:
    return {
        "data": {"kind": "cache", "path": str(cache), "latent_size": [frames, SIZE, SIZE], "text_dropout": 0.1},
        "checkpoint": {"every": 10_000, "keep_last": 1, "link_components": False},
    }


def train_config(r: Recipe, work: Path, stage: str) -> dict:
    """The ``pyrflow-train`` config of the ``image``, ``conventional`` or ``pyramidal`` step."""
    image, pyramidal = stage == "image", stage == "pyramidal"
    steps, batch = {
        "image": (r.image_steps, r.image_batch),
        "conventional": (r.conventional_steps, r.conventional_batch),
        "pyramidal": (r.pyramidal_steps, r.pyramidal_per_stage),
    }[stage]
    source = {
        "image": "",
        "conventional": str(work / "image" / "export"),
        "pyramidal": str(work / "conventional" / "export"),
    }
    cfg = _common(work / ("cache-image" if image else "cache"), 1 if image else r.frames)
    cfg.update(
        {
            "model": {"config": "shapes", "path": source[stage]},
            "pyramid": {
                "num_stages": 3 if pyramidal else 1,
                "boundaries": list(WAN_DEFAULT_BOUNDARIES) if pyramidal else [],
            },
            # a constant rate: the image model is still improving when its phase ends
            "optim": {
                "lr": r.pyramidal_lr if pyramidal else r.conventional_lr,
                "warmup_steps": min(100, steps // 16),
                "weight_decay": 0.0,
                "schedule": "cosine" if pyramidal else "constant",
                "min_lr_ratio": 0.1,
            },
            # natural weighting: the coarse stages (gains up to 8) would otherwise dominate the gradient
            "loss": {
                "weighting": "natural" if pyramidal else "sigma",
                "sigma_shift": r.sigma_shift,
            },
            "ema": {"decay": 0.995 if steps >= 400 else 0.0},
            "train": {
                "output_dir": str(work / stage),
                "steps": steps,
                "samples_per_stage": batch,
                "seed": r.seed,
                "gradient_checkpointing": False,
                "precision": r.precision,
                "device": r.device,
                "log_every": 10,
            },
        }
    )
    return cfg


def distill_config(r: Recipe, work: Path, stage: str = "distilled") -> dict:
    """The ``pyrflow-distill`` config of the ``distilled`` (dmd-pt*, 2-2-1 from the pyramidal
    model) or ``distilled-plain`` (dmd-ot, 0-0-2 from the conventional model) step."""
    cfg = _common(work / "cache", r.frames)
    if stage == "distilled":
        source, stages, distill = (
            "pyramidal",
            3,
            {"variant": "dmd-pt*", "schedule": "2-2-1", "regression_schedule": "10-10-10"},
        )
    else:  # one stage (0-0-2 is the same grid); its teacher needs no multi-resolution finetune
        source, stages, distill = (
            "conventional",
            1,
            {"variant": "dmd-ot", "schedule": "2", "regression_schedule": "20", "teacher_finetune_steps": 0},
        )
    cfg.update(
        {
            "model": {"config": "shapes", "path": str(work / source / "export")},
            "pyramid": {"num_stages": stages, "boundaries": list(WAN_DEFAULT_BOUNDARIES)[: stages - 1]},
            "distill": {
                **distill,
                "guidance": r.guidance,
                "lora_rank": 0,
                "sample_shift": r.sigma_shift,
                "score_shift": r.sigma_shift,
            },
            "optim": {"lr": r.distill_lr, "warmup_steps": 0, "weight_decay": 0.0},
            "train": {
                "output_dir": str(work / stage),
                "steps": r.distill_steps,
                "batch_size": r.distill_batch,
                "seed": r.seed,
                "gradient_checkpointing": False,
                "precision": r.precision,
                "device": r.device,
                "log_every": 10,
            },
        }
    )
    return cfg


def _run(cmd: list[str], log, commands: list[str]) -> None:
    shown = " ".join(c if " " not in c else repr(c) for c in cmd)
    commands.append(shown.replace(sys.executable, "python"))
    log(f"$ {commands[-1]}")
    subprocess.run(cmd, check=True)


def assemble(work: Path, out: Path, r: Recipe, info: dict) -> None:
    """Copy each exported transformer and the frozen components into ``out/<model>`` with its card."""
    components = work / "components"
    cards = {
        "conventional": ModelCard(
            kind="base", boundaries=WAN_DEFAULT_BOUNDARIES, schedule="0-0-50", uncond="zeros", guidance=r.guidance
        ),
        "pyramidal": ModelCard(kind="pyramidal", schedule="20-20-10", uncond="zeros", guidance=r.guidance),
        "distilled": ModelCard(kind="distilled", schedule="2-2-1", uncond="zeros", guidance=r.guidance),
        "distilled-plain": ModelCard(kind="distilled", schedule="0-0-2", uncond="zeros", guidance=r.guidance),
    }
    for name in MODELS:
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(components, target)
        export = work / name / "export"
        save_wan(load_wan(export), target, layout="diffusers")
        exported = ModelCard.load(export)
        if (
            exported.kind != cards[name].kind
            or parse_schedule(exported.schedule)[-1] != parse_schedule(cards[name].schedule)[-1]
        ):
            raise RuntimeError(f"{export}: unexpected card {exported}")
        # the size and the noise-level shift it was trained at
        replace(cards[name], size=(r.frames, SIZE, SIZE), shift=r.sigma_shift).save(target)
    write_embeddings(out / "distilled")  # every model has the same frozen text encoder
    info = {**info, "losses": {step: losses(work / step / "metrics.jsonl") for step in STEPS[1:]}}
    (out / "recipe.json").write_text(json.dumps(info, indent=2) + "\n")


def losses(metrics: Path) -> dict[str, list[list[float]]]:
    """Every logged loss of a run's ``metrics.jsonl``: ``{name: [[step, value], ...]}``."""
    out: dict[str, list[list[float]]] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if "loss" in key and isinstance(value, (int, float)):
                out.setdefault(key, []).append([record["step"], round(value, 6)])
    return out


def run(
    work: str | Path, out: str | Path = SHIPPED, recipe: Recipe = Recipe(), steps: tuple[str, ...] = STEPS, log=print
) -> dict:
    """Run ``steps`` of the recipe in ``work`` and write the model directories to ``out``.

    Steps left out must have run before in ``work`` (their exports are reused); the commands and
    times of earlier runs are kept in ``work/recipe.json``.
    """
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown recipe steps {unknown}; expected some of {STEPS}")
    state = work / "recipe.json"
    info = json.loads(state.read_text()) if state.is_file() else {"commands": {}, "seconds": {}}
    py = sys.executable
    start = time.perf_counter()
    for step in (s for s in STEPS if s in steps):
        t0 = time.perf_counter()
        commands: list[str] = []
        if step == "data":
            _run(
                [
                    py,
                    "-m",
                    "pyrflow_fast.shapes.data",
                    "--out",
                    str(work / "data"),
                    "--num",
                    str(recipe.videos),
                    "--seed",
                    str(recipe.seed),
                    "--size-range",
                    *map(str, recipe.size_range),
                    "--speed-range",
                    *map(str, recipe.speed_range),
                    "--no-progress",
                ],
                log,
                commands,
            )
            write_components(work / "components", seed=recipe.seed)
            call = f'write_components("{work / "components"}", seed={recipe.seed})'
            commands.append(f"python -c 'from pyrflow_fast.shapes.components import write_components; {call}'")
            for cache, frames in (("cache-image", 1), ("cache", recipe.frames)):
                _run(
                    [
                        py,
                        "-m",
                        "pyrflow_fast.data.cache",
                        "--data",
                        str(work / "data"),
                        "--model-dir",
                        str(work / "components"),
                        "--out",
                        str(work / cache),
                        "--frames",
                        str(frames),
                        "--height",
                        str(SIZE),
                        "--width",
                        str(SIZE),
                        "--fps",
                        str(FPS),
                        "--text-len",
                        str(TEXT_LEN),
                        "--shard-size",
                        "1000",
                        "--batch-size",
                        "50",
                        "--overwrite",
                        "--no-progress",
                    ],
                    log,
                    commands,
                )
        else:
            path = work / f"{step}.json"
            trains = step in ("image", "conventional", "pyramidal")
            cfg = train_config(recipe, work, step) if trains else distill_config(recipe, work, step)
            path.write_text(json.dumps(cfg, indent=2) + "\n")
            shutil.rmtree(work / step, ignore_errors=True)
            _run(
                [
                    py,
                    "-m",
                    "pyrflow_fast.train" if trains else "pyrflow_fast.distill",
                    "--config",
                    str(path),
                    "--set",
                    "train.progress=false",
                ],
                log,
                commands,
            )
        info["commands"][step] = [c.replace(str(work), "WORK") for c in commands]
        info["seconds"][step] = round(time.perf_counter() - t0, 1)
        log(f"[{time.perf_counter() - start:7.1f} s] {step} done in {info['seconds'][step]} s")
        state.write_text(json.dumps(info, indent=2) + "\n")
    info["recipe"] = asdict(recipe)
    info["total_seconds"] = round(sum(info["seconds"].values()), 1)
    missing = [m for m in MODELS if not (work / m / "export").is_dir()]
    if missing:  # a partial run (tuning a phase): nothing to assemble yet
        state.write_text(json.dumps(info, indent=2) + "\n")
        log(f"not writing {out}: no export yet of {', '.join(missing)} (run --steps {' '.join(missing)})")
        return info
    info["configs"] = {m: json.loads((work / f"{m}.json").read_text().replace(str(work), "WORK")) for m in MODELS}
    state.write_text(json.dumps(info, indent=2) + "\n")
    assemble(work, out, recipe, info)
    log(f"wrote {', '.join(str(out / m) for m in MODELS)}")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyrflow_fast.shapes.recipe", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, default=Path("outputs/shapes-recipe"), help="working folder (data, cache, runs)"
    )
    ap.add_argument(
        "--out", type=Path, default=SHIPPED, help="where the three model directories go (default: the shipped ones)"
    )
    ap.add_argument(
        "--preset",
        choices=PRESETS,
        default="cpu",
        help="cpu: the shipped recipe (this 2-core CPU); gpu: one CUDA GPU, bf16, 4x batches; "
        "quick: a few steps per stage (a smoke test, not a model)",
    )
    ap.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="run only these steps (the others must have run in --work before)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the preset, e.g. distill_steps=200 (see Recipe; repeatable, as pyrflow-train's)",
    )
    args = ap.parse_args(argv)
    try:
        recipe = override(PRESETS[args.preset], args.set)
    except ValueError as e:
        ap.error(str(e))
    info = run(args.work, args.out, recipe, tuple(args.steps))
    print(json.dumps(info["seconds"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
