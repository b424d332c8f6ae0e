"""The benchmark scripts run (smoke): the GPU script on a tiny config on CPU, and the CPU e2e timing."""

import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_script_smoke_on_cpu():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--config", "tiny", "--device", "cpu"]
    cmd += ["--size", "5", "8", "8", "--repeats", "1", "--dtype", "float32"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "| 0 | 5x8x8 | 80 |" in out and "| 20-20-10 | 0-0-50 | 5.0 |" in out and "| 2-2-1 | 0-0-2 | none |" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_script_refuses_missing_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA requested but not available" in run.stderr
