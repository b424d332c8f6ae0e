"""Exact symbolic (SymPy) proofs of the identities pyrflow relies on (theory §§2-4), checked on pyrflow_ref's code.

Each module states one identity in its docstring and exposes ``prove() -> str``, which raises
``AssertionError`` if the identity does not hold and otherwise returns a short derivation. Every
proof evaluates pyrflow_ref's own functions: symbolically where they are plain arithmetic, else
against the proof's closed form in float64 (1e-12). They look the functions up when they run, so
an error planted in pyrflow_ref (``monkeypatch.setattr``) fails them. ``python -m proofs [NAME ...]``
runs them all, or the named ones.
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


def run_all(names=None):
    """Run every proof, or those in ``names``; returns (name, proven, text) with the derivation or the failure.

    Any exception fails the proof: code that cannot even be evaluated on the proof's values is not proven.
    """
    results = []
    for name, module in PROOFS:
        if names is not None and name not in names:
            continue
        try:
            results.append((name, True, module.prove()))
        except AssertionError as exc:
            results.append((name, False, f"{exc}"))
        except Exception as exc:
            results.append((name, False, f"{type(exc).__name__}: {exc}"))
    return results
