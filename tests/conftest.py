"""Test configuration shared by the whole suite (per-dtype tolerances live in tolerances.py)."""

import os

import torch

# Set before any @triton.jit is defined: without a GPU the kernels run in Triton's interpreter; with
# one they compile (an explicit TRITON_INTERPRET in the environment wins either way).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
