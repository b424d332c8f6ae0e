"""The ``--help`` format of pyrflow's commands: each option's help ends with its default.

>>> import argparse
>>> ap = argparse.ArgumentParser(prog="demo", formatter_class=DefaultsFormatter)
>>> _ = ap.add_argument("--steps", type=int, default=4, help="sampling steps")
>>> _ = ap.add_argument("--out", default=None, help="output file")
>>> _ = ap.add_argument("--shift", default=None, help="timestep shift (default: the config's)")
>>> print(ap.format_help().split("options:")[1].strip().replace("  ", " "))  # doctest: +NORMALIZE_WHITESPACE
-h, --help show this help message and exit
--steps STEPS sampling steps (default: 4)
--out OUT output file
--shift SHIFT timestep shift (default: the config's)
"""

from __future__ import annotations

import argparse

__all__ = ["DefaultsFormatter"]


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that leaves out unset defaults (``None``, ``False``) and helps
    that already say their default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in help:
            return action.help
        return super()._get_help_string(action)
