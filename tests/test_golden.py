"""Golden fixtures (fixed seeds): the reference's numbers do not drift unnoticed."""

import importlib.util
import pathlib

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent / "golden"
spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
make_golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_golden)

CURRENT = make_golden.compute()
GOLDEN = dict(np.load(make_golden.PATH))


def test_same_keys():
    assert sorted(CURRENT) == sorted(GOLDEN)


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_matches_golden(key):
    np.testing.assert_allclose(CURRENT[key], GOLDEN[key], rtol=0, atol=1e-12)
