"""Run the doctests of pyrflow_fast (pytest's --doctest-modules only covers tests/ and pyrflow_ref/)."""

import doctest
import importlib

import pytest

MODULES = [
    "pyrflow_fast.wan.keys",
    "pyrflow_fast.flops",
    "pyrflow_fast.contract",
    "pyrflow_fast.card",
    "pyrflow_fast.pipeline.t5_keys",
    "pyrflow_fast.pipeline.vae_keys",
    "pyrflow_fast.pipeline.components",
    "pyrflow_fast.resample",
    "pyrflow_fast.natural",
    "pyrflow_fast.process",
    "pyrflow_fast.samplers",
    "pyrflow_fast.kernels",
    "pyrflow_fast.data.video",
    "pyrflow_fast.data.dataset",
    "pyrflow_fast.data.pyramid",
    "pyrflow_fast.data.cache",
    "pyrflow_fast.train.config",
    "pyrflow_fast.train.loss",
    "pyrflow_fast.train.lora",
    "pyrflow_fast.train.synthetic",
    "pyrflow_fast.train.cli",
    "pyrflow_fast.train.evidence",
    "pyrflow_fast.train.runner",
    "pyrflow_fast.train.methods",
    "pyrflow_fast.distill.dmd",
    "pyrflow_fast.distill.adversarial",
    "pyrflow_fast.distill.lora",
    "pyrflow_fast.ppf",
    "pyrflow_fast.distill.config",
    "pyrflow_fast.distill.cli",
    "pyrflow_fast.distill.evidence",
    "pyrflow_fast.pipeline.pixel",
    "pyrflow_fast.pipeline.tokenizer",
    "pyrflow_fast.shapes.data",
    "pyrflow_fast.shapes.analyze",
    "pyrflow_fast.shapes.components",
    "pyrflow_fast.shapes.__main__",
    "pyrflow_fast.solvers",
    "pyrflow_fast.cli_help",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, pyrflow_fast; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
