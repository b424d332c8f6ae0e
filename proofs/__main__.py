"""``python -m proofs [NAME ...]``: print one PROVEN / FAILED line per identity with its derivation.

Exit status 0 when every selected proof holds, 1 when one fails, 2 for an unknown name.
"""

import sys

from . import PROOFS, run_all


def main(names=()):
    """Run the proofs named in ``names`` (all when empty); returns the exit status."""
    unknown = sorted(set(names) - {name for name, _ in PROOFS})
    if unknown:
        print(f"unknown proof(s): {', '.join(unknown)}; known: {', '.join(name for name, _ in PROOFS)}")
        return 2
    results = run_all(names or None)
    for name, proven, text in results:
        print(f"{'PROVEN' if proven else 'FAILED'}  {name}")
        print("\n".join(f"    {line}" for line in text.splitlines()))
    failed = [name for name, proven, _ in results if not proven]
    print(f"{len(results) - len(failed)}/{len(results)} proven" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
