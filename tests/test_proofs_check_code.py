"""The proofs check pyrflow_ref's code: an error planted in it (one at a time) makes the proofs that cover it fail.

Each case patches one function, matrix or constant of pyrflow_ref and runs only the proofs that
evaluate it (``python -m proofs NAME ...``, in process: the proofs look the code up when they run).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proofs.__main__ import main
from pyrflow_ref import calibration, natural, process, pyramid_flow, resample, windows

ROOT = Path(__file__).resolve().parents[1]
# The originals, which some wrong versions build on
HAAR, DCT = resample.haar_matrix, resample.dct_matrix
JUMP, STAGE_CONSTANTS = pyramid_flow.jump_coefficients, pyramid_flow.stage_constants


def haar_means(n, factor=2):
    """Low rows as block means (avgpool's 1/factor) instead of block sums / sqrt(factor)."""
    t = np.array(HAAR(n, factor))
    t[: n // factor] /= np.sqrt(factor)
    return t


def dct_not_inverted(n, factor=2):
    """Low rows: the DCT coefficients themselves, not inverted at the coarse length (orthogonal, same P)."""
    m = n // factor
    return np.vstack([resample.dct2_matrix(n)[:m], DCT(n, factor)[m:]])


def forward_sample_own_signal(x0s, eps, sigma, stage, stage_windows, pyramid):
    """y_n from the stage's own clean signal instead of up(x0^(i+1)): the high band never fades."""
    sc, sn = stage_windows.sigma_c(stage), stage_windows.sigma_n(stage)
    coarse = x0s[stage] if stage + 1 < len(x0s) else np.zeros_like(eps)
    yc, yn = process.y_c(x0s[stage], eps, sc), process.y_n(coarse, eps, sn)
    return process.pyramidal_x(yc, yn, process.rho(sigma, sc, sn)), process.target(yc, yn, sc, sn)


def decode_without_k(x, v, sigma, sigma_c, sigma_n, project):
    """x - sigma v, forgetting the high-band factor 1 / k of the middle stages."""
    return x - np.reshape(sigma, (-1,) + (1,) * (x.ndim - 1)) * v


def up_noisy_white(self, y, s, w):
    """Adds all of w, not only its high band (I - P) w."""
    return self.up(y, np.shape(w)) + np.reshape(s, (-1,) + (1,) * (np.ndim(w) - 1)) * w


# id -> (module or class, attribute, wrong value, the proofs that must fail)
PLANTED = {
    "varsigma g inverted": (
        natural,
        "varsigma",
        lambda sigma, g: sigma / (g * sigma + 1 - sigma),
        ["varsigma", "bridge"],
    ),
    "sigma_from_varsigma not the inverse": (
        natural,
        "sigma_from_varsigma",
        lambda vs, g: vs / (vs + g * (1 - vs)),
        ["varsigma"],
    ),
    "scale_c mirrored": (natural, "scale_c", lambda sigma, g: g * sigma + 1 - sigma, ["varsigma", "bridge"]),
    "bridge_velocity sign of (1 - g)": (
        natural,
        "bridge_velocity",
        lambda x, sigma, g, v: (g - 1) * x / natural.scale_c(sigma, g) + g / natural.scale_c(sigma, g) * v,
        ["bridge"],
    ),
    "natural_velocity without the weight": (
        natural,
        "natural_velocity",
        lambda x, sigma, g, v: v - (1 - g) * x / natural.scale_c(sigma, g),
        ["bridge"],
    ),
    "haar_matrix block means": (resample, "haar_matrix", haar_means, ["resampler_orthonormal", "transition"]),
    "dct_matrix not inverted": (resample, "dct_matrix", dct_not_inverted, ["resampler_orthonormal"]),
    "up_noisy full white noise": (resample.Resampler, "up_noisy", up_noisy_white, ["transition"]),
    "y_c roles swapped": (
        process,
        "y_c",
        lambda x0, eps, sigma_c: sigma_c * x0 + (1 - sigma_c) * eps,
        ["forward_properties", "pt_dmd"],
    ),
    "y_n noise sigma_n^2": (
        process,
        "y_n",
        lambda x0_up, eps, sigma_n: (1 - sigma_n) * x0_up + sigma_n**2 * eps,
        ["forward_properties", "pt_dmd"],
    ),
    "forward_sample own signal": (
        process,
        "forward_sample",
        forward_sample_own_signal,
        ["forward_properties", "pt_dmd"],
    ),
    "target divides by sigma_n + sigma_c": (
        process,
        "target",
        lambda yc, yn, sigma_c, sigma_n: (yn - yc) / (sigma_n + sigma_c),
        ["forward_properties"],
    ),
    "x0_from_velocity without k": (process, "x0_from_velocity", decode_without_k, ["forward_properties"]),
    "jump_coefficients b without sqrt": (
        pyramid_flow,
        "jump_coefficients",
        lambda s, r=4: (JUMP(s, r)[0], (1 - s) * (r - 1) / r, JUMP(s, r)[2]),
        ["pyramid_flow"],
    ),
    "stage_constants on 999 timesteps": (
        pyramid_flow,
        "stage_constants",
        lambda: STAGE_CONSTANTS(num_train_timesteps=999),
        ["pyramid_flow"],
    ),
    "block_correlation -1/r": (pyramid_flow, "block_correlation", lambda r: -1 / r, ["pyramid_flow"]),
    "calibrate_boundaries tau / E without sqrt": (
        calibration,
        "calibrate_boundaries",
        lambda energies, tau: windows.StageWindows((1 / (1 + tau / np.asarray(energies))).tolist()),
        ["calibration"],
    ),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_error_fails_its_proofs(case, monkeypatch, capsys):
    owner, attribute, wrong, names = PLANTED[case]
    monkeypatch.setattr(owner, attribute, wrong)
    assert main(names) == 1
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("FAILED")] == names, out


def test_code_the_proofs_cannot_evaluate_fails_them(monkeypatch, capsys):
    """A float64-only varsigma (right values, no SymPy path) is not proven: its exception is the failure."""

    def varsigma_float64(sigma, g):
        sigma = np.asarray(sigma, dtype=np.float64)
        return sigma / (sigma + g * (1 - sigma))

    monkeypatch.setattr(natural, "varsigma", varsigma_float64)
    assert main(["varsigma"]) == 1
    assert "FAILED  varsigma\n    TypeError" in capsys.readouterr().out


def test_unknown_proof_name_exits_2(capsys):
    assert main(["varsigma", "no_such_proof"]) == 2
    assert "unknown proof(s): no_such_proof" in capsys.readouterr().out


def test_python_m_proofs_selection_fails_on_planted_error():
    """The command line itself: the selection proves, and a varsigma patched in before main() fails it."""
    proven = subprocess.run([sys.executable, "-m", "proofs", "varsigma"], cwd=ROOT, capture_output=True, text=True)
    assert proven.returncode == 0 and "1/1 proven" in proven.stdout, proven.stdout + proven.stderr
    patch = "import pyrflow_ref.natural as n; n.varsigma = lambda s, g: s / (g * s + 1 - s); "
    planted = subprocess.run(
        [sys.executable, "-c", patch + "from proofs.__main__ import main; raise SystemExit(main(['varsigma']))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert planted.returncode == 1 and "FAILED  varsigma" in planted.stdout, planted.stdout + planted.stderr
