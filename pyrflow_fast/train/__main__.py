"""``python -m pyrflow_fast.train``: see :mod:`pyrflow_fast.train.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
