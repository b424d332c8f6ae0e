"""Fixtures of the pyrflow_fast tests."""

import pytest
from wan_fixtures import random_wan


@pytest.fixture(scope="module")
def tiny_model():
    return random_wan("tiny", seed=0)


@pytest.fixture
def make_wan():
    return random_wan
