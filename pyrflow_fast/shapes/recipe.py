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

The paper's other routes (:data:`pyrflow_fast.shapes.ROUTES`: DMD-OT, DMD-PT, adversarial OD and PD,
PPF; all to ``2-2-1`` from the same models) are steps of their own, left out of the default run and of
the package: ``--steps dmd-ot dmd-pt adv-od adv-pd ppf`` writes their model directories to
``WORK/routes`` for the results table (``python -m pyrflow_fast.shapes.results --routes WORK/routes``).

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

from ..card import PPF_FILE, ModelCard
from ..wan.checkpoint import load_wan, save_wan
from . import MODELS, ROUTES, SHIPPED
from .components import TEXT_LEN, write_components, write_embeddings
from .data import FPS, SIZE, SIZE_RANGE, SPEED_RANGE

__all__ = [
    "ADV_DMD2",
    "GPU",
    "PPF_PATCHES",
    "PRESETS",
    "QUICK",
    "ROUTE_STEPS",
    "STEPS",
    "Recipe",
    "main",
    "override",
    "run",
]

GUIDANCE = 2.0  # CFG of the cards and the distillation teachers: subject consistency falls as it grows (docs/shapes.md)
#: The recipe's steps in order; ``--steps`` runs a subset in an existing working folder.
STEPS = ("data", "image", "conventional", "pyramidal", "distilled", "distilled-plain")
#: The steps of the routes that are not shipped (after ``STEPS``; they need its exports).
ROUTE_STEPS = tuple(ROUTES)
#: adv-od / adv-pd as DMD2 runs them: a small GAN term added to DMD-PT*, without the reconstruction term, whose
#: gradient is ~100x the hinge term's at the start and made the students regress to a blurred mean (FD 0.6);
#: adv_weight 3 let the hinge term dominate DMD's (all-correct 0.42 / 0.64, docs/shapes.md)
ADV_DMD2 = {"dmd_weight": 1.0, "adv_weight": 0.1, "rec_weight": 0.0}
#: PPF's patches per stage, finest first: the pyramid's token grids of each frame (Haar 2x2 per stage)
PPF_PATCHES = ((1, 4, 4), (1, 8, 8), (1, 16, 16))


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
    #: DMD iterations to 2-2-1 (also of every route): 500 left DMD-PT* at the undistilled model's 2-2-1
    distill_steps: int = 1000
    #: DMD iterations of the 0-0-2 model at full resolution
    plain_steps: int = 250
    distill_batch: int = 8
    distill_lr: float = 2e-4
    #: dmd-ot's multi-resolution and ppf's patch finetune of their teachers (steps, at ``pyramidal_lr``)
    route_finetune_steps: int = 600
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
    plain_steps=2,
    distill_batch=1,
    route_finetune_steps=1,
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
    """The ``pyrflow-distill`` config of the ``distilled`` (dmd-pt*, 2-2-1 from the pyramidal model),
    ``distilled-plain`` (dmd-ot, 0-0-2 from the conventional model) or a route's step (:data:`ROUTE_STEPS`)."""
    cfg = _common(work / "cache", r.frames)
    conventional = str(work / "conventional" / "export")
    model = {"config": "shapes", "path": str(work / "pyramidal" / "export")}
    if stage == "distilled-plain":  # one stage (0-0-2 is the same grid); its teacher needs no multi-resolution finetune
        model["path"], stages, steps = conventional, 1, r.plain_steps
        distill = {"variant": "dmd-ot", "schedule": "2", "regression_schedule": "20", "teacher_finetune_steps": 0}
    else:
        stages, steps = 3, r.distill_steps
        variant = "dmd-pt*" if stage == "distilled" else stage
        distill = {"variant": variant, "schedule": "2-2-1", "regression_schedule": "10-10-10"}
        if variant in ("dmd-ot", "adv-od"):  # the "original Wan" of these routes: the conventional model
            model["original_path"] = conventional
        if variant.startswith("adv"):
            distill.update(ADV_DMD2)
        if variant in ("dmd-ot", "ppf"):
            distill.update(
                teacher_finetune_steps=r.route_finetune_steps,
                teacher_finetune_lr=r.pyramidal_lr,
                teacher_finetune_shift=r.sigma_shift,
            )
        if variant == "ppf":  # PPF finetunes the conventional model: patches, not resolutions, as stages
            model["path"] = conventional
            distill["ppf_patches"] = [list(p) for p in PPF_PATCHES]
    cfg.update(
        {
            "model": model,
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
                "steps": steps,
                "batch_size": r.distill_batch,
                "seed": r.seed,
                "gradient_checkpointing": False,
                "precision": r.precision,
                "device": r.device,
                # every iteration: the generator updates on iterations 0, 5, 10, ... (critic ratio 5), which a
                # line every 10th step (1-based) never shows
                "log_every": 1,
            },
        }
    )
    return cfg


def _run(cmd: list[str], log, commands: list[str]) -> None:
    shown = " ".join(c if " " not in c else repr(c) for c in cmd)
    commands.append(shown.replace(sys.executable, "python"))
    log(f"$ {commands[-1]}")
    subprocess.run(cmd, check=True)


def _cards(r: Recipe) -> dict[str, ModelCard]:
    """The card of every model and route (before its size and shift)."""
    distilled = ModelCard(kind="distilled", schedule="2-2-1", uncond="zeros", guidance=r.guidance)
    return {
        "conventional": ModelCard(
            kind="base", boundaries=WAN_DEFAULT_BOUNDARIES, schedule="0-0-50", uncond="zeros", guidance=r.guidance
        ),
        "pyramidal": ModelCard(kind="pyramidal", schedule="20-20-10", uncond="zeros", guidance=r.guidance),
        "distilled": distilled,
        "distilled-plain": replace(distilled, schedule="0-0-2"),
        **{name: distilled for name in ROUTES},
        "ppf": replace(distilled, ppf_patches=PPF_PATCHES),
    }


def assemble(
    work: Path,
    out: Path,
    r: Recipe,
    info: dict,
    names: tuple[str, ...] = tuple(MODELS),
    steps: tuple[str, ...] = STEPS,
) -> None:
    """Copy each exported transformer of ``names`` and the frozen components into ``out/<name>`` with its card,
    and the commands, times, configs and logged losses of ``steps`` (from ``info``) into ``out/recipe.json``."""
    components = work / "components"
    cards = _cards(r)
    for name in names:
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(components, target)
        export = work / name / "export"
        save_wan(load_wan(export), target, layout="diffusers")
        if (export / PPF_FILE).is_file():
            shutil.copy2(export / PPF_FILE, target / PPF_FILE)
        exported = ModelCard.load(export)
        if (
            exported.kind != cards[name].kind
            or parse_schedule(exported.schedule)[-1] != parse_schedule(cards[name].schedule)[-1]
            or exported.ppf_patches != cards[name].ppf_patches
        ):
            raise RuntimeError(f"{export}: unexpected card {exported}")
        # the size and the noise-level shift it was trained at
        replace(cards[name], size=(r.frames, SIZE, SIZE), shift=r.sigma_shift).save(target)
    write_embeddings(out / names[-1])  # every model has the same frozen text encoder
    kept = {key: {s: v for s, v in info.get(key, {}).items() if s in steps} for key in ("commands", "seconds")}
    kept["configs"] = {s: v for s, v in info.get("configs", {}).items() if s in names}
    record = {
        **info,
        **kept,
        "total_seconds": round(sum(kept["seconds"].values()), 1),
        "losses": {s: losses(work / s / "metrics.jsonl") for s in steps if s != "data"},
    }
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")


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
    unknown = sorted(set(steps) - set(STEPS) - set(ROUTE_STEPS))
    if unknown:
        raise ValueError(f"unknown recipe steps {unknown}; expected some of {(*STEPS, *ROUTE_STEPS)}")
    state = work / "recipe.json"
    info = json.loads(state.read_text()) if state.is_file() else {"commands": {}, "seconds": {}}
    py = sys.executable
    start = time.perf_counter()
    for step in (s for s in (*STEPS, *ROUTE_STEPS) if s in steps):
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
            info.setdefault("configs", {})[step] = json.loads(path.read_text().replace(str(work), "WORK"))
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
    info["total_seconds"] = round(sum(info["seconds"].get(s, 0.0) for s in STEPS), 1)  # the shipped recipe's
    state.write_text(json.dumps(info, indent=2) + "\n")
    if set(steps) & set(ROUTE_STEPS):  # every route built so far, for the results table
        routes = tuple(n for n in ROUTE_STEPS if (work / n / "export").is_dir())
        assemble(work, work / "routes", recipe, info, routes, routes)
        log(f"wrote {', '.join(str(work / 'routes' / n) for n in routes)}")
    if not set(steps) & set(STEPS):
        return info
    missing = [m for m in MODELS if not (work / m / "export").is_dir()]
    if missing:  # a partial run (tuning a phase): nothing to assemble yet
        log(f"not writing {out}: no export yet of {', '.join(missing)} (run --steps {' '.join(missing)})")
        return info
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
        choices=(*STEPS, *ROUTE_STEPS),
        default=list(STEPS),
        help="run only these steps (the others must have run in --work before); the routes "
        f"({', '.join(ROUTE_STEPS)}) run only when named, into WORK/routes",
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
