r"""Spectral calibration of stage boundaries (theory §3.2).

Natural video has little energy in high bands, so noise drowns them first. Let :math:`E_i` be
the mean per-element energy, in orthonormal units, of the band removed between stages :math:`i`
and :math:`i + 1`. Its SNR at noise level :math:`\sigma` is :math:`(1 - \sigma)^2 E_i / \sigma^2`;
calibration puts the boundary :math:`\sigma_c^{(i+1)}` where that SNR equals a threshold
:math:`\tau`:

.. math::

    \sigma_c^{(i+1)} = \frac{1}{1 + \sqrt{\tau / E_i}} .

Once a band's SNR is below :math:`\tau` it is mostly noise, so it can be generated at the coarser
stage and filled in with white noise by ``up_noisy``.
"""

from __future__ import annotations

import numpy as np

from .process import clean_pyramid_latent
from .resample import Pyramid
from .windows import StageWindows


def band_energies(latents: np.ndarray, pyramid: Pyramid) -> np.ndarray:
    """Mean per-element energy of each removed band, ``E_i`` for ``i = 0 .. S-2``.

    :param latents: data latents ``(B, C, F, H, W)`` (Definition 1 pyramid, orthonormal units).
    """
    x0s = clean_pyramid_latent(np.asarray(latents, dtype=np.float64), pyramid)
    out = []
    for transition, fine, coarse in zip(pyramid.transitions, x0s[:-1], x0s[1:]):
        band = transition.high(fine)
        out.append(np.sum(band**2) / (fine.size - coarse.size))
    return np.array(out)


def calibrate_boundaries(energies, tau: float) -> StageWindows:
    """Stage windows whose boundary ``i + 1`` gives band ``i`` the SNR ``tau``.

    >>> calibrate_boundaries([0.25, 1.0], tau=1.0)
    StageWindows([0.3333333333333333, 0.5])
    """
    e = np.asarray(energies, dtype=np.float64)
    if tau <= 0 or np.any(e <= 0):
        raise ValueError(f"tau and the band energies must be positive, got tau={tau}, energies={e.tolist()}")
    return StageWindows((1.0 / (1.0 + np.sqrt(tau / e))).tolist())


def threshold_for(energy: float, sigma: float) -> float:
    """The ``tau`` at which band energy ``energy`` puts its boundary at ``sigma``."""
    return (1 - sigma) ** 2 * energy / sigma**2
