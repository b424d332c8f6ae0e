"""The symbolic proofs (proofs/): every identity is proven, the registry is complete, failures are loud."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import sympy as sp

import proofs
from proofs import _core, _resamplers
from proofs.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "resampler_orthonormal",
    "projection",
    "transition",
    "continuity",
    "varsigma",
    "bridge",
    "forward_properties",
    "pyramid_flow",
    "pt_dmd",
    "calibration",
]


@pytest.mark.parametrize("name, module", proofs.PROOFS, ids=[name for name, _ in proofs.PROOFS])
def test_identity_is_proven(name, module):
    text = module.prove()
    assert text.rstrip().endswith("QED"), name


def test_registry_covers_every_module():
    assert [name for name, _ in proofs.PROOFS] == MODULES
    on_disk = {p.stem for p in (ROOT / "proofs").glob("*.py") if not p.stem.startswith("_")}
    assert on_disk == set(MODULES)


def test_checkers_reject_false_statements():
    x = sp.Symbol("x")
    with pytest.raises(AssertionError, match="sqrt2 squared is 3"):
        _core.assert_zero(sp.sqrt(2) ** 2 - 3, "sqrt2 squared is 3")
    with pytest.raises(AssertionError, match="cos"):
        _core.assert_zero(sp.cos(sp.pi / 8) - sp.Rational(9, 10), "cos(pi/8) = 0.9")
    with pytest.raises(AssertionError):
        _core.assert_zero((x + 1) ** 2 - x**2 - 1, "binomial without the cross term")
    unnormalised = _resamplers.axis_matrix("haar", 4) * sp.sqrt(2)  # block sums without the 1/sqrt(2)
    with pytest.raises(AssertionError, match="orthogonal"):
        _core.assert_orthogonal(unnormalised, "unnormalised Haar orthogonal")
    with pytest.raises(AssertionError):
        _core.assert_positive(-sp.Symbol("g", positive=True), "-g > 0")
    with pytest.raises(AssertionError, match="max \\|code - closed form\\| = 3e-12"):
        _core.assert_close([1.0, 2.0 + 3e-12], [1, 2], "float64 off by 3e-12")
    with pytest.raises(AssertionError, match="NaN near 1"):
        _core.assert_close(float("nan"), 1, "NaN near 1")
    _core.assert_close([1e6 + 1e-7], [10**6], "1e-7 at 1e6 is within 1e-12 relative")


def test_failure_is_reported(monkeypatch, capsys):
    broken = SimpleNamespace(prove=lambda: _core.assert_zero(sp.Integer(1), "1 = 0"))
    monkeypatch.setattr(proofs, "PROOFS", [("broken", broken)])
    [(name, proven, text)] = proofs.run_all()
    assert (name, proven) == ("broken", False) and "1 = 0 does not hold" in text
    assert main() == 1
    assert "FAILED  broken" in capsys.readouterr().out


def test_python_m_proofs_exits_zero():
    done = subprocess.run([sys.executable, "-m", "proofs"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10/10 proven" in done.stdout
