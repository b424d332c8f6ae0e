"""``python -m proofs``: print one PROVEN / FAILED line per identity with its derivation."""

import sys

from . import run_all


def main():
    results = run_all()
    for name, proven, text in results:
        print(f"{'PROVEN' if proven else 'FAILED'}  {name}")
        print("\n".join(f"    {line}" for line in text.splitlines()))
    failed = [name for name, proven, _ in results if not proven]
    print(f"{len(results) - len(failed)}/{len(results)} proven" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
