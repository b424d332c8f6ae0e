r"""Natural noise level, scale and the velocity bridge (theory §3.1).

A stage sample with low-pass signal is :math:`x = (1 - \sigma) g a_0 + \sigma \epsilon`, where
:math:`g` is the per-frame gain of the stage and :math:`a_0` the natural-scale clean latent.
Dividing by :math:`c = g(1 - \sigma) + \sigma` gives plain rectified-flow form at natural scale:

.. math::

    \frac{x}{c} = (1 - \varsigma) a_0 + \varsigma \epsilon, \qquad
    \varsigma = \frac{\sigma}{\sigma + g (1 - \sigma)}.

The backbone sees :math:`x / c` and :math:`t = 1000 \varsigma` and predicts the natural velocity
:math:`\hat v`; the pyramidal velocity follows exactly from

.. math::

    \frac{dx}{d\sigma} = (1 - g)\frac{x}{c} + \big((1 - \varsigma) + g \varsigma\big) \hat v .

All functions are elementwise and broadcast; use :func:`per_frame` to shape a per-sample
``sigma`` ``(B,)`` and a per-frame gain ``(F,)`` against ``(B, C, F, H, W)`` arrays.
"""

from __future__ import annotations

import numpy as np

from .resample import batch_scalar


def varsigma(sigma, g):
    r"""Natural noise level :math:`\sigma / (\sigma + g (1 - \sigma))`.

    Strictly increasing in :math:`\sigma` for :math:`g > 0`, fixes 0 and 1.

    >>> float(varsigma(0.5, 2.0))
    0.3333333333333333
    """
    return sigma / (sigma + g * (1 - sigma))


def sigma_from_varsigma(vs, g):
    r"""Inverse of :func:`varsigma`: :math:`\sigma = g \varsigma / (1 - \varsigma + g \varsigma)`.

    >>> float(sigma_from_varsigma(1 / 3, 2.0))
    0.5
    """
    return g * vs / (1 - vs + g * vs)


def scale_c(sigma, g):
    r"""The scale :math:`c = g (1 - \sigma) + \sigma` that maps a stage sample to natural scale."""
    return g * (1 - sigma) + sigma


def bridge_velocity(x, sigma, g, v_hat):
    r"""Pyramidal velocity :math:`dx/d\sigma` from the natural velocity :math:`\hat v` (exact)."""
    vs = varsigma(sigma, g)
    return (1 - g) * (x / scale_c(sigma, g)) + ((1 - vs) + g * vs) * v_hat


def natural_velocity(x, sigma, g, v):
    r"""Inverse of :func:`bridge_velocity`: the natural velocity :math:`\hat v` from :math:`dx/d\sigma`."""
    vs = varsigma(sigma, g)
    return (v - (1 - g) * (x / scale_c(sigma, g))) / ((1 - vs) + g * vs)


# twin: pyrflow_fast.natural.per_frame
def per_frame(sigma, g, ndim: int = 5):
    """Shape a scalar or per-sample ``sigma`` ``(B,)`` and a per-frame gain ``(F,)`` for ``(B, C, F, H, W)``.

    Returns ``(sigma, g)`` broadcastable against an array with ``ndim`` dimensions whose frame
    axis is ``-3``.
    """
    g = np.asarray(g, dtype=np.float64)
    return batch_scalar(sigma, ndim), g.reshape(g.shape + (1, 1))
