"""PPF checkpoints (pyrflow_fast.ppf.PPFWan) under context parallelism on gloo: 2 and 4 processes against one.

One ``torchrun`` of this file per world size (``python -m torch.distributed.run --nproc_per_node N
tests/fast/test_ppf_parallel.py REPORT``): every rank samples a random PPF model with
:func:`~pyrflow_fast.ppf.sample_ppf` itself (no collectives) and through
:class:`~pyrflow_fast.parallel.ContextParallelWan`, and rank 0 writes the largest relative error of each
check to ``REPORT``.
"""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch
from test_context_parallel import COMBINATIONS

FULL = (5, 16, 24)  # the PPF stages see 8x12, 4x6 and 2x3 tokens per frame (patches 1x2x2, 1x4x4, 1x8x8)
SAMPLE_TOL = 1e-5  # float32, relative to the largest entry
SCHEDULES = {"20-20-10": (20, 20, 10), "2-2-1": (2, 2, 1)}  # steps per stage, coarsest first


def _random_ppf(cfg, seed: int):
    """A PPFWan on a random WanDiT, its own stage embeddings, patch embeddings and heads random too."""
    from wan_fixtures import random_wan

    from pyrflow_fast.ppf import PPFWan

    ppf = PPFWan(random_wan(cfg, seed=seed, std=0.2))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ppf.named_parameters():
            if not name.startswith("model."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return ppf.eval()


def _worker(path: str) -> None:
    """Every check on this rank; rank 0 writes ``{check: largest value over the ranks}``."""
    from test_context_parallel import Report, _rel

    from pyrflow_fast.parallel import ContextParallelWan, ParallelPlan, make_groups, shard_blocks
    from pyrflow_fast.ppf import sample_ppf
    from pyrflow_fast.wan.config import get_config
    from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

    report = Report(cfg_parallel=True)
    record = report.record

    cfg = get_config("tiny").replace(dim=48, num_heads=6)  # 6 heads: uneven over 4 ranks
    ppf = _random_ppf(cfg, seed=3)
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)

    def run(net, schedule, batch, guidance_scale, cache=True):
        """``sample_ppf`` with ``net`` for ``schedule`` from fixed noise, conditions and re-noising noise."""
        gen = torch.Generator().manual_seed(11)
        noise = torch.randn(batch, cfg.in_dim, *FULL, generator=gen)
        cond = torch.randn(batch, 5, cfg.text_dim, generator=gen)
        dit = (net.model if isinstance(net, ContextParallelWan) else net).model
        with torch.no_grad(), dit.text_cache() if cache else contextlib.nullcontext():
            if guidance_scale is None:
                return sample_ppf(net, noise, cond, windows, schedule, shift=5.0, few_step=True,
                                  rng=torch.Generator().manual_seed(5))  # fmt: skip
            return sample_ppf(net, noise, cond, windows, schedule, shift=5.0, guidance=guidance_scale,
                              uncond=torch.zeros_like(cond))  # fmt: skip

    cases = {"20-20-10": (1, 5.0), "2-2-1": (2, None)}  # the few-step batch of 2 exercises the batch split too
    reference = {schedule: run(ppf, schedule, *args) for schedule, args in cases.items()}
    finest_tokens = FULL[0] * (FULL[1] // 4) * (FULL[2] // 4)  # stage 1's tokens: "finest" splits above them
    groups = {False: make_groups(False), True: report.groups}
    for name, splits in report.sample_combinations(ppf, finest_tokens + 1, groups, run, cases, reference):
        per_frame = [sum(shards.per_rank) for shards in splits]
        for stage in range(3):  # told apart by their tokens per frame
            record(f"splits/stage{stage}/{name}", per_frame.count(FULL[1] * FULL[2] // 4 ** (stage + 1)))
    keys = set(ContextParallelWan(ppf, ParallelPlan()).state_dict())
    record("state_dict_is_the_ppf_models", float(keys != {f"model.{k}" for k in ppf.state_dict()}))

    # the shared blocks FSDP-sharded over the ranks; PPF's own layers stay whole
    sharded = _random_ppf(cfg, seed=3)
    shard_blocks(sharded.model)
    net = ContextParallelWan(sharded, ParallelPlan("ulysses", min_tokens=0), groups[False])
    for schedule, args in cases.items():
        record(f"fsdp/sample/{schedule}", _rel(run(net, schedule, *args, cache=False), reference[schedule]))
    report.write(path)


def _expected_splits(world: int, stage: int, schedule: str, label: str, cfg_parallel: bool) -> int:
    """Split forwards of ``stage`` (0: finest) in one run: the context group is half the ranks with the batch split."""
    ranks = world // 2 if cfg_parallel else world
    if ranks == 1 or (label == "finest" and stage > 0):
        return 0
    return SCHEDULES[schedule][::-1][stage]  # one (batched) forward per step


@pytest.mark.parametrize("world", [2, 4])
def test_ppf_sampling_on_ranks_equals_one_process(world, tmp_path):
    from launch_fixtures import run_torchrun

    report = tmp_path / f"ppf_parallel_{world}.json"
    run_torchrun(__file__, str(report), nproc=world, timeout=240)
    errors = json.loads(report.read_text())
    assert len(errors) == (2 + 3) * len(SCHEDULES) * len(COMBINATIONS) + 1 + len(SCHEDULES), sorted(errors)
    bad = {}
    for name, err in errors.items():
        kind, _, rest = name.partition("/")
        if kind == "splits":
            stage, schedule, _, label, cfg = rest.split("/")
            want = _expected_splits(world, int(stage[5:]), schedule, label, cfg.endswith("True"))
            if err != want:
                bad[name] = (err, want)
        elif not err <= (SAMPLE_TOL if name.startswith(("sample/", "fsdp/sample/")) else 0.0):
            bad[name] = err
    assert not bad, bad


if __name__ == "__main__":
    _worker(sys.argv[1])
