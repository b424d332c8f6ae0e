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

from ..train.cli import config_data, fit_command, runner_parser
from .config import VARIANTS, DistillConfig

__all__ = ["build_parser", "main", "resolve_config"]


def _overrides(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--variant", default=None, help=f"override distill.variant: one of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--schedule", default=None, help="override distill.schedule, e.g. 2-2-1 (one entry per pyramid stage)"
    )


def build_parser() -> argparse.ArgumentParser:
    return runner_parser(
        "pyrflow-distill",
        "Few-step distillation of a pyramidal Wan2.1 transformer (DMD OT/PT/PT*, adversarial OD/PD, PPF).",
        _overrides,
    )


def resolve_config(args: argparse.Namespace) -> DistillConfig:
    """The config file (or the defaults) with ``--set``, ``--variant`` and ``--schedule`` applied."""
    data = config_data(args, DistillConfig)
    if args.variant is not None:
        data["distill"]["variant"] = args.variant
    if args.schedule is not None:
        data["distill"]["schedule"] = args.schedule
    return DistillConfig.from_dict(data)


def _summary(config: DistillConfig, last: dict) -> str:
    return f"{config.distill.variant}, iteration {last['step']}"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    overridden = bool(args.set) or args.variant is not None
    return fit_command(ap, args, DistillConfig, resolve_config, _summary, overridden=overridden)


if __name__ == "__main__":
    raise SystemExit(main())
