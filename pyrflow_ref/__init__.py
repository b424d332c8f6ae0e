"""pyrflow_ref: the NumPy reference of pyramidal flow matching (float64, no torch).

One concept per module, paper-notation names; ``pyrflow_fast`` mirrors these names and is tested
against them. See ``docs/theory.md`` for the derivations and ``proofs/`` for the identities.
"""

from .calibration import band_energies, calibrate_boundaries
from .natural import bridge_velocity, natural_velocity, scale_c, sigma_from_varsigma, varsigma
from .plan import Plan, StagePlan
from .process import (
    StageProcess,
    clean_pyramid_latent,
    clean_pyramid_pixel,
    forward_sample,
    pyramidal_x,
    rho,
    target,
    x0_from_velocity,
    y_c,
    y_n,
)
from .resample import TRANSITION_FAMILIES, WAN_PYRAMID, Pyramid, Resampler, dct_matrix, haar_matrix
from .samplers import (
    Prediction,
    guidance_combine,
    guided,
    model_velocity,
    sample_euler,
    sample_few_step,
    sample_plain,
)
from .windows import WAN_DEFAULT_BOUNDARIES, StageWindows, format_schedule, parse_schedule, shift_sigma, step_grid

__all__ = [
    "TRANSITION_FAMILIES",
    "WAN_DEFAULT_BOUNDARIES",
    "WAN_PYRAMID",
    "Plan",
    "Prediction",
    "Pyramid",
    "Resampler",
    "StagePlan",
    "StageProcess",
    "StageWindows",
    "band_energies",
    "bridge_velocity",
    "calibrate_boundaries",
    "clean_pyramid_latent",
    "clean_pyramid_pixel",
    "dct_matrix",
    "format_schedule",
    "forward_sample",
    "guidance_combine",
    "guided",
    "haar_matrix",
    "model_velocity",
    "natural_velocity",
    "parse_schedule",
    "pyramidal_x",
    "rho",
    "sample_euler",
    "sample_few_step",
    "sample_plain",
    "scale_c",
    "shift_sigma",
    "sigma_from_varsigma",
    "step_grid",
    "target",
    "varsigma",
    "x0_from_velocity",
    "y_c",
    "y_n",
]
