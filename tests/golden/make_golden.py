"""Regenerate the golden fixtures of pyrflow_ref: ``python tests/golden/make_golden.py``.

Fixed seeds and small shapes; tests/test_golden.py compares the current code against the file.
Regenerate only for an intended change of the numbers, and say why in the commit.
"""

import pathlib

import numpy as np

from pyrflow_ref.gaussian import GaussianVideoModel, power_law_covariance
from pyrflow_ref.resample import Pyramid, Resampler
from pyrflow_ref.samplers import sample_euler, sample_few_step
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

PATH = pathlib.Path(__file__).with_name("ref_golden.npz")
SHAPE = (1, 5, 4, 4)


def compute() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261126)
    x = rng.standard_normal((2, 3, 5, 4, 6))
    w = rng.standard_normal((2, 3, 5, 4, 6))
    out = {}
    for family in ("haar", "dct", "avgpool"):
        out[f"down_{family}"] = Resampler(family).down(x)
    out["up_noisy_haar"] = Resampler("haar").up_noisy(out["down_haar"], 0.4, w)
    pyramid = Pyramid.uniform("haar", (2, 2, 2), 3)
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    model = GaussianVideoModel.latent(power_law_covariance(SHAPE), SHAPE, pyramid, windows)
    noise = rng.standard_normal((2, *model.shapes[-1]))
    out["euler_4_4_2"] = sample_euler(model, noise, pyramid, windows, "4-4-2", shift=5.0, rng=np.random.default_rng(1))
    out["few_step_2_2_1"] = sample_few_step(model, noise, pyramid, windows, "2-2-1", rng=np.random.default_rng(2))
    return out


if __name__ == "__main__":
    np.savez(PATH, **compute())
    print(f"wrote {PATH}")
