"""End to end on one small CPU config: pyramidal vs plain schedules, wall time and FLOPs ratios.

``make bench`` runs it under pytest-benchmark (``--benchmark-enable``); both schedules of a pair
are timed in the same run and the ratios land in the benchmark's ``extra_info``. As a script,
``.venv/bin/python benchmarks/bench_e2e.py`` prints the table recorded in benchmarks/RESULTS.md.
"""

import sys

import pytest
import torch
from timing import Bench, compare, markdown

from pyrflow_fast.wan import WanConfig

# A small Wan (same architecture) on a 33x256x256-pixel-equivalent latent: 16 x 9 x 32 x 32.
CONFIG = WanConfig(dim=128, ffn_dim=512, freq_dim=64, num_heads=4, num_layers=4, text_dim=64, text_len=32)
SIZE = (9, 32, 32)
PAIRS = [("20-20-10", "0-0-50", 5.0), ("2-2-1", "0-0-2", None)]


@pytest.fixture(scope="module")
def bench():
    return Bench(CONFIG, SIZE, torch.device("cpu"))


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}_vs_{p[1]}")
def test_pyramidal_vs_plain(benchmark, bench, pair):
    pyramidal, plain, guidance = pair
    benchmark.group = f"e2e {pyramidal} vs {plain}"
    benchmark.pedantic(bench.sample, args=(pyramidal, guidance), rounds=3, iterations=1, warmup_rounds=1)
    (row,) = compare(bench, [pair])
    benchmark.extra_info.update(row)
    assert row["flops_ratio"] < 1.0  # a benchmark: times are reported, never asserted


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    rows = compare(
        Bench(CONFIG, SIZE, torch.device("cpu")), PAIRS, repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 3
    )
    print(f"{CONFIG}\nstage-0 latent {SIZE}, {torch.get_num_threads()} threads\n")
    print(markdown(rows))
