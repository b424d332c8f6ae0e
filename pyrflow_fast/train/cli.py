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
import os
import pickle
import sys
from collections.abc import Callable

from .config import TrainConfig, load_config

__all__ = ["build_parser", "config_data", "fit_command", "main", "parse_override", "runner_parser"]


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


def runner_parser(
    prog: str, description: str, add_overrides: Callable[[argparse.ArgumentParser], None] = lambda ap: None
) -> argparse.ArgumentParser:
    """The flags of every command over the Runner (``pyrflow-train``, ``pyrflow-distill``); ``add_overrides``
    adds a command's own shortcuts, listed after ``--config``."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", help="config file (.toml or .json); fields not set keep their defaults")
    add_overrides(ap)
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


def build_parser() -> argparse.ArgumentParser:
    return runner_parser("pyrflow-train", "Pyramidal finetuning of a Wan2.1 transformer.")


def config_data(args: argparse.Namespace, cls: type = TrainConfig) -> dict:
    """The nested dict of the config file (or of ``cls``'s defaults) with ``--set`` applied."""
    data = cls().to_dict() if args.config is None else load_config(args.config, cls).to_dict()
    for text in args.set:
        section, name, value = parse_override(text)
        if section not in data:
            raise ValueError(f"--set {text}: unknown config section {section!r}")
        data[section][name] = value
    return data


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(config_data(args))


def fit_command(
    ap: argparse.ArgumentParser,
    args: argparse.Namespace,
    cls: type,
    resolve: Callable[[argparse.Namespace], object],
    summary: Callable[[object, dict], str],
    *,
    overridden: bool,
) -> int:
    """What a command over the Runner does with its parsed ``args``: print ``cls``'s defaults, or fit a
    Runner on ``resolve(args)`` (``--config`` required unless ``overridden``) and print ``done: <summary>``
    on rank 0. A user-facing error while building or fitting prints ``<prog>: error: ...`` and returns 2; a
    collective that timed out (``train.collective_timeout``: a stalled or dead rank) prints the message naming
    the field and ends the process with status 2 (the process group cannot be freed while a peer is stuck)."""
    if args.print_default_config:
        config = cls()
        sys.stdout.write(config.to_toml() if args.format == "toml" else config.to_json())
        return 0
    if args.config is None and not overridden:
        ap.error("--config is required (see --print-default-config)")
    try:
        config = resolve(args)
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    from .distributed import collective_timeout_message
    from .runner import Runner

    def stop_after_timeout(err: BaseException) -> None:
        # a collective timed out: the peer is stuck, and freeing the process group would wait for it
        # (gloo joins its pending work), so this process ends here, with the reason
        message = collective_timeout_message(err, config.train.collective_timeout)
        if message is not None:
            print(f"{ap.prog}: error: {message}", file=sys.stderr, flush=True)
            os._exit(2)

    try:
        runner = Runner(config)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as err:
        stop_after_timeout(err)
        print(f"{ap.prog}: error: {err}", file=sys.stderr)
        return 2
    try:
        history = runner.fit(resume=args.resume)
    except BaseException as err:
        stop_after_timeout(err)
        runner.dist.abort()  # no last barrier: the other ranks may have stopped on the same error, or be gone
        if not isinstance(err, (ValueError, FileNotFoundError, pickle.UnpicklingError)):
            raise
        print(f"{ap.prog}: error: {err}", file=sys.stderr)
        return 2
    runner.close()
    if runner.rank == 0:
        last = history[-1] if history else {"step": runner.step}
        print(f"done: {summary(config, last)}; run directory {runner.out}", file=sys.stderr)
    return 0


def _summary(config: TrainConfig, last: dict) -> str:
    return f"step {last['step']}" + (f", loss {last['loss']:.6f}" if "loss" in last else "")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    return fit_command(ap, args, TrainConfig, resolve_config, _summary, overridden=bool(args.set))


if __name__ == "__main__":
    raise SystemExit(main())
