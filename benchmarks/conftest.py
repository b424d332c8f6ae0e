"""Collect ``bench_*.py`` files (pytest's default pattern only finds ``test_*.py``)."""

import pytest


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
