"""The benchmark scripts run (smoke): the GPU script on a tiny config on CPU, and the CPU e2e timing."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_script_smoke_on_cpu():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--skip-compiled"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "| 0 | 5x8x8 | 80 |" in out and "| 20-20-10 | 0-0-50 | 5.0 |" in out and "| 2-2-1 | 0-0-2 | none |" in out
    assert "torch " in out and "attention auto" in out


def test_gpu_script_compiled_writes_json_to_out(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--no-schedules", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OUT": str(tmp_path)})
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report == json.loads(run.stdout)
    assert set(report["modes"]) == {"eager", "compiled"} and report["attention"] == "auto"
    assert [f["tokens"] for f in report["modes"]["compiled"]["forwards"]] == [80, 12, 2]
    assert all(f["tflops_per_s"] > 0 for f in report["modes"]["eager"]["forwards"])
    assert {"torch", "cuda", "cudnn", "triton", "device"} <= set(report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_script_refuses_missing_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA requested but not available" in run.stderr
