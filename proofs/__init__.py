"""Exact symbolic (SymPy) proofs of the identities pyrflow relies on (theory §§2-4).

Each module states one identity in its docstring and exposes ``prove() -> str``, which raises
``AssertionError`` if the identity does not hold and otherwise returns a short derivation.
``python -m proofs`` runs them all.
"""

from . import (
    bridge,
    calibration,
    continuity,
    forward_properties,
    projection,
    pt_dmd,
    pyramid_flow,
    resampler_orthonormal,
    transition,
    varsigma,
)

# Ordered as the mathematics builds up: resamplers, stage transitions, conditioning, forward process,
# special cases, distillation, calibration.
PROOFS = [
    (module.__name__.rsplit(".", 1)[1], module)
    for module in (
        resampler_orthonormal,
        projection,
        transition,
        continuity,
        varsigma,
        bridge,
        forward_properties,
        pyramid_flow,
        pt_dmd,
        calibration,
    )
]


def run_all():
    """Run every proof; returns a list of (name, proven, text) with the derivation or the failure."""
    results = []
    for name, module in PROOFS:
        try:
            results.append((name, True, module.prove()))
        except AssertionError as exc:
            results.append((name, False, f"{exc}"))
    return results
