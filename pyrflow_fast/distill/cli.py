r"""Command line of distillation: ``python -m pyrflow_fast.distill`` / ``pyrflow-distill``.

::

    pyrflow-distill --print-default-config > distill.toml     # every field, documented
    pyrflow-distill --config distill.toml                      # distil; export to <output_dir>/export
    pyrflow-distill --config distill.toml --variant dmd-ot     # another route
    pyrflow-distill --config distill.toml --resume             # continue from the latest checkpoint
    torchrun --nproc_per_node 2 -m pyrflow_fast.distill --config distill.toml --set train.parallel=\"ddp\"
    torchrun --nproc_per_node 2 -m pyrflow_fast.distill --config distill.toml --set train.parallel=\"fsdp\"
    pyrflow-sample --model-dir outputs/distill/export --prompt "..."   # few-step sampling, no CFG

Variants (``distill.variant`` or ``--variant``): ``dmd-ot``, ``dmd-pt``, ``dmd-pt*``, ``adv-od``,
``adv-pd``, ``ppf`` (:data:`pyrflow_fast.distill.config.VARIANTS`). ``--set SECTION.FIELD=VALUE``
overrides one field as in ``pyrflow-train``. An unknown variant, an unknown field or a schedule
that does not fit the pyramid's stage count stops with a clear error (exit status 2).

>>> build_parser().parse_args(["--variant", "dmd-pt"]).variant
'dmd-pt'
"""

from __future__ import annotations

import argparse
import sys

from ..train.cli import parse_override
from .config import VARIANTS, DistillConfig, load_distill_config

__all__ = ["build_parser", "main", "resolve_config"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyrflow-distill",
        description="Few-step distillation of a pyramidal Wan2.1 transformer (DMD OT/PT/PT*, adversarial OD/PD, PPF).",
    )
    ap.add_argument("--config", help="config file (.toml or .json); fields not set keep their defaults")
    ap.add_argument("--variant", default=None, help=f"override distill.variant: one of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--schedule", default=None, help="override distill.schedule, e.g. 2-2-1 (one entry per pyramid stage)"
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)"
    )
    ap.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/latest")
    ap.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the default config with every field documented and exit",
    )
    ap.add_argument("--format", choices=("toml", "json"), default="toml", help="format of --print-default-config")
    return ap


def resolve_config(args: argparse.Namespace) -> DistillConfig:
    """The config file (or the defaults) with ``--set``, ``--variant`` and ``--schedule`` applied."""
    data = DistillConfig().to_dict() if args.config is None else load_distill_config(args.config).to_dict()
    for text in args.set:
        section, name, value = parse_override(text)
        if section not in data:
            raise ValueError(f"--set {text}: unknown config section {section!r}")
        data[section][name] = value
    if args.variant is not None:
        data["distill"]["variant"] = args.variant
    if args.schedule is not None:
        data["distill"]["schedule"] = args.schedule
    return DistillConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.print_default_config:
        config = DistillConfig()
        sys.stdout.write(config.to_toml() if args.format == "toml" else config.to_json())
        return 0
    if args.config is None and not args.set and args.variant is None:
        ap.error("--config is required (see --print-default-config)")
    try:
        config = resolve_config(args)
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    from ..train.cli import run_fit
    from ..train.runner import Runner

    done = run_fit(lambda: Runner(config), args.resume, "pyrflow-distill")
    if done is None:
        return 2
    runner, history = done
    if runner.rank == 0:
        last = history[-1] if history else {"step": runner.step}
        print(f"done: {config.distill.variant}, iteration {last['step']}; run directory {runner.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
