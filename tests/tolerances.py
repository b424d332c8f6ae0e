"""Tolerances, written once: absolute error of exact-in-theory linear algebra on unit-scale data."""

import numpy as np

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
