r"""Command line of the trainer: ``python -m pyrflow_fast.train`` / ``pyrflow-train``.

::

    pyrflow-train --print-default-config > finetune.toml     # every field, documented
    pyrflow-train --config finetune.toml                      # one process
    torchrun --nproc_per_node 2 -m pyrflow_fast.train --config finetune.toml --set train.parallel=\"fsdp\"
    pyrflow-train --config finetune.toml --resume             # continue from the latest checkpoint

``--set SECTION.FIELD=VALUE`` overrides one field (``VALUE`` is parsed as JSON, else taken as a
string), e.g. ``--set train.steps=100 --set data.kind=synthetic``.

>>> parse_override("train.steps=100")
('train', 'steps', 100)
>>> parse_override("data.path=/data/cache")
('data', 'path', '/data/cache')
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import TrainConfig, load_config

__all__ = ["build_parser", "main", "parse_override"]


def parse_override(text: str) -> tuple[str, str, object]:
    """``"section.field=value"`` -> ``(section, field, value)`` (value JSON-decoded when it parses)."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ValueError(f"--set expects SECTION.FIELD=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return section, name, parsed


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyrflow-train", description="Pyramidal finetuning of a Wan2.1 transformer.")
    ap.add_argument("--config", help="config file (.toml or .json); fields not set keep their defaults")
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


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    data = TrainConfig().to_dict() if args.config is None else load_config(args.config).to_dict()
    for text in args.set:
        section, name, value = parse_override(text)
        if section not in data:
            raise ValueError(f"--set {text}: unknown config section {section!r}")
        data[section][name] = value
    return TrainConfig.from_dict(data)


def run_fit(make, resume: bool, prog: str):
    """Build a :class:`~pyrflow_fast.train.runner.Runner` with ``make()`` and fit it.

    Returns ``(runner, history)``, or ``None`` after printing ``prog: error: ...`` when building or
    fitting fails with a user-facing error.
    """
    try:
        runner = make()
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return None
    try:
        history = runner.fit(resume=resume)
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return None
    finally:
        runner.close()
    return runner, history


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.print_default_config:
        config = TrainConfig()
        sys.stdout.write(config.to_toml() if args.format == "toml" else config.to_json())
        return 0
    if args.config is None and not args.set:
        ap.error("--config is required (see --print-default-config)")
    try:
        config = resolve_config(args)
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    from .runner import Runner

    done = run_fit(lambda: Runner(config), args.resume, "pyrflow-train")
    if done is None:
        return 2
    runner, history = done
    if runner.rank == 0:
        last = history[-1] if history else {"step": runner.step}
        print(
            f"done: step {last['step']}"
            + (f", loss {last['loss']:.6f}" if "loss" in last else "")
            + f"; run directory {runner.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
