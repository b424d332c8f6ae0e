"""``python -m pyrflow_fast.distill``: see :mod:`pyrflow_fast.distill.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
