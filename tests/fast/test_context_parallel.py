"""Context parallelism (pyrflow_fast.parallel) on gloo: 2 and 4 processes against one.

The multi-process checks run in one ``torchrun`` of this file per world size (``python -m
torch.distributed.run --nproc_per_node N tests/fast/test_context_parallel.py REPORT``): every rank
computes the single-process result itself (same inputs, same code, no collectives) and its
parallel result, and rank 0 writes the largest relative error of each check to ``REPORT``.
The tests here launch it and compare; the plan's rules and the log-sum-exp kernel are tested in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyrflow_fast.parallel import ParallelPlan, shard_sizes
from pyrflow_fast.parallel.context import TokenShards, _attend_lse_math, attend_lse, per_frame_slice

REPO = Path(__file__).resolve().parents[2]
FULL = (5, 8, 24)  # latent; the Wan pyramid's stages have 48, 12 and 3 tokens per frame (patch 1x2x2)
ATTENTION_TOL = 2e-6  # float32, relative to the output's largest entry
SAMPLE_TOL = 1e-5
FSDP_SLACK = 0.02  # the largest share of the blocks' weights a rank may store beyond 1/N
SCHEDULES = {"20-20-10": (20, 20, 10), "2-2-1": (2, 2, 1)}  # steps per stage, coarsest first
# (method, which stages split, cfg_parallel)
COMBINATIONS = [("ulysses", "all", False), ("ulysses", "all", True), ("ring", "all", False), ("ring", "finest", False)]


# ------------------------------------------------------------------------------ worker
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class Report:
    """The checks of one gloo worker (this file's, ``test_ppf_parallel``'s, ``test_parallel_14b``'s): each value
    is the largest over the ranks, and rank 0 writes them as JSON. Joins the torchrun group on creation."""

    def __init__(self, cfg_parallel: bool = False) -> None:
        from pyrflow_fast.parallel import setup

        torch.set_num_threads(1)
        self.plan, self.groups = setup("ring", cfg_parallel=cfg_parallel)  # gloo without CUDA
        self.errors: dict[str, float] = {}

    def record(self, name: str, value: float) -> None:
        import torch.distributed as dist

        out = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        self.errors[name] = float(out)

    def sample(self, name: str, out: torch.Tensor, reference: torch.Tensor) -> None:
        """``sample/name``: ``out``'s error relative to the one-process ``reference``; ``ranks_differ/name``:
        its largest difference from another rank's (0: the latents are bit-identical on every rank)."""
        import torch.distributed as dist

        self.record(f"sample/{name}", _rel(out, reference))
        gathered = [torch.empty_like(out) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, out)
        self.record(f"ranks_differ/{name}", max(float((g - out).abs().max()) for g in gathered))

    def sample_combinations(self, model, finest_tokens, groups, run, cases, references):
        """Sample ``model`` through ``ContextParallelWan`` for each of :data:`COMBINATIONS` and each schedule of
        ``cases`` (``run(net, schedule, *cases[schedule])``), recording :meth:`sample` against ``references``.

        "all" splits every forward with a token per rank, "finest" only those of at least ``finest_tokens``.
        Yields each run's name and the :class:`TokenShards` of its split forwards.
        """
        import pyrflow_fast.parallel.wan as cp_wan
        from pyrflow_fast.parallel import ContextParallelWan

        splits = []
        original = cp_wan.context_attention
        cp_wan.context_attention = lambda *args: (splits.append(args[1]), original(*args))[1]
        try:
            for method, label, cfg_parallel in COMBINATIONS:
                min_tokens = 0 if label == "all" else finest_tokens
                plan = ParallelPlan(method=method, min_tokens=min_tokens, cfg_parallel=cfg_parallel)
                net = ContextParallelWan(model, plan, groups[cfg_parallel])
                for schedule, args in cases.items():
                    splits.clear()
                    name = f"{schedule}/{method}/{label}/cfg_parallel={cfg_parallel}"
                    self.sample(name, run(net, schedule, *args), references[schedule])
                    yield name, list(splits)
        finally:
            cp_wan.context_attention = original

    def write(self, path: str) -> None:
        import torch.distributed as dist

        from pyrflow_fast.parallel import leave

        if dist.get_rank() == 0:
            Path(path).write_text(json.dumps(self.errors, indent=1))
        leave()


def _worker(path: str) -> None:
    """Every check on this rank; rank 0 writes ``{check: largest relative error over the ranks}``."""
    import torch.distributed as dist
    from torch.utils.flop_counter import FlopCounterMode
    from wan_fixtures import random_wan

    import pyrflow_fast.parallel.context as cp_context
    from pyrflow_fast.contract import BackboneDenoiser, WanBackbone
    from pyrflow_fast.parallel import (
        ContextParallelWan,
        make_groups,
        ring_attention,
        shard_blocks,
        shared_seed,
        ulysses_attention,
    )
    from pyrflow_fast.parallel.cost import forward_cost
    from pyrflow_fast.resample import WAN_PYRAMID
    from pyrflow_fast.samplers import guided, sample_euler, sample_few_step
    from pyrflow_fast.wan import attention
    from pyrflow_fast.wan.config import get_config
    from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

    report = Report(cfg_parallel=True)
    cfg_groups, record, errors = report.groups, report.record, report.errors
    assert dist.get_backend() == "gloo" and report.plan == ParallelPlan("ring", cfg_parallel=True)
    world, rank = dist.get_world_size(), dist.get_rank()

    # attention: uneven tokens per frame (7, 9) and heads (6 over 4 ranks: 2, 2, 1, 1)
    for frames, per_frame, heads in ((3, 7, 6), (2, 9, 4)):
        gen = torch.Generator().manual_seed(frames)
        q, k, v = (torch.randn(2, frames * per_frame, heads, 8, generator=gen) for _ in range(3))
        full = attention.attend(q, k, v)
        shards = TokenShards.split(frames, per_frame, world)
        start, count = shards.start(rank), shards.per_rank[rank]
        mine = [per_frame_slice(a.transpose(0, 1), frames, start, count).transpose(0, 1) for a in (q, k, v, full)]
        with torch.no_grad():
            for name, fn in (("ulysses", ulysses_attention), ("ring", ring_attention)):
                record(f"attention/{name}/{frames}x{per_frame}x{heads}h", _rel(fn(*mine[:3], shards), mine[3]))

    cfg = get_config("tiny").replace(dim=48, num_heads=6)  # 6 heads: uneven over 4 ranks
    model = random_wan(cfg, seed=3, std=0.2)
    windows = StageWindows(WAN_DEFAULT_BOUNDARIES)
    shapes = WAN_PYRAMID.shapes((1, cfg.in_dim, *FULL))
    mid_tokens = shapes[1][2] * (shapes[1][3] // 2) * (shapes[1][4] // 2)

    def run(net, schedule, batch, guidance_scale, cache=True):
        """The sampled latents of ``net`` for ``schedule`` from fixed noise, conditions and transition noise."""
        gen = torch.Generator().manual_seed(11)
        noise = torch.randn(batch, *shapes[2][1:], generator=gen)
        cond = torch.randn(batch, 5, cfg.text_dim, generator=gen)
        denoiser = BackboneDenoiser(WanBackbone(net), full_size=FULL)
        inner = net.model if isinstance(net, ContextParallelWan) else net
        with torch.no_grad(), inner.text_cache() if cache else contextlib.nullcontext():
            if guidance_scale is None:
                return sample_few_step(denoiser, noise, WAN_PYRAMID, windows, schedule, cond=cond, shift=5.0,
                                       rng=torch.Generator().manual_seed(5))  # fmt: skip
            g = guided(denoiser, guidance_scale, uncond=torch.zeros_like(cond))
            return sample_euler(g, noise, WAN_PYRAMID, windows, schedule, cond=cond, shift=5.0,
                                rng=torch.Generator().manual_seed(5))  # fmt: skip

    groups = {False: make_groups(False), True: cfg_groups}
    seeds = [None] * world
    dist.all_gather_object(seeds, shared_seed(1000 + rank))
    record("shared_seed_is_not_rank_0s", float(seeds != [1000] * world))
    # one forward's bytes sent and FLOPs computed by each rank against the cost model; FlopCounterMode counts
    # attention only as matmuls: SDPA's math kernel, the ring's blocks through the log-sum-exp math
    sent = [0]
    patched = {fn: getattr(dist, fn) for fn in ("all_to_all_single", "batch_isend_irecv", "all_gather", "broadcast")}

    def count(tensor, n):
        sent[0] += n * tensor.numel() * tensor.element_size()

    def all_to_all_single(out, inp, out_splits, in_splits, group=None):
        count(inp, 1)
        count(inp.view(-1)[: in_splits[dist.get_rank(group)]], -1)  # its own split stays
        return patched["all_to_all_single"](out, inp, out_splits, in_splits, group=group)

    def batch_isend_irecv(ops):
        for op in ops:
            count(op.tensor, op.op is dist.isend)
        return patched["batch_isend_irecv"](ops)

    def all_gather(parts, tensor, group=None):
        count(tensor, dist.get_world_size(group) - 1)
        return patched["all_gather"](parts, tensor, group=group)

    def broadcast(tensor, src, group=None):
        count(tensor, (dist.get_world_size(group) - 1) * (src == rank))
        return patched["broadcast"](tensor, src, group=group)

    x = torch.randn(1, cfg.in_dim, *FULL, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(1, 5, cfg.text_dim, generator=torch.Generator().manual_seed(3))
    for method in ("ulysses", "ring"):
        net = ContextParallelWan(model, ParallelPlan(method, min_tokens=0), groups[False])
        for size in (FULL, shapes[2][2:]):
            part = x[:, :, : size[0], : size[1], : size[2]]
            sent[0] = 0
            for fn in (all_to_all_single, batch_isend_irecv, all_gather, broadcast):
                setattr(dist, fn.__name__, fn)
            cp_context.attend_lse = cp_context._attend_lse_math
            try:
                with torch.no_grad(), attention.use("math"), FlopCounterMode(display=False) as flops:
                    net(part, 500.0, cond)
            finally:
                cp_context.attend_lse = attend_lse
                for name, fn in patched.items():
                    setattr(dist, name, fn)
            most = torch.tensor([sent[0], flops.get_total_flops()], dtype=torch.float64)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            want = forward_cost(cfg, size, world, net.plan.method_for(size, 0, size[1] * size[2] // 4, world),
                                activation_bytes=4)  # fmt: skip
            tag = "x".join(map(str, size))
            errors[f"bytes/{method}/{tag}"] = abs(float(most[0]) - want.bytes_sent) / want.bytes_sent
            errors[f"flops/{method}/{tag}"] = abs(float(most[1]) - want.flops) / want.flops

    cases = {"20-20-10": (1, 5.0), "2-2-1": (2, None)}  # the few-step batch of 2 exercises the batch split too
    reference = {schedule: run(model, schedule, *args) for schedule, args in cases.items()}
    for name, splits in report.sample_combinations(model, mid_tokens + 1, groups, run, cases, reference):
        record(f"splits/{name}", len(splits))

    # the blocks' weights FSDP-sharded over the ranks (as for the 14B), tokens split with Ulysses
    sharded = shard_blocks(random_wan(cfg, seed=3, std=0.2))
    local = sum(p.to_local().numel() for p in sharded.blocks.parameters())
    whole = sum(p.numel() for p in model.blocks.parameters())
    # FSDP2 splits each parameter's first dimension: a (1, 6, dim) modulation stays on one rank
    record("fsdp/stored_fraction_above_1/N", local / whole - 1 / world)
    net = ContextParallelWan(sharded, ParallelPlan("ulysses", min_tokens=0), groups[False])
    for schedule, args in cases.items():
        record(f"fsdp/sample/{schedule}", _rel(run(net, schedule, *args, cache=False), reference[schedule]))
    # sharded blocks: text_cache() caches nothing (the keys need the gathered block weights) and changes nothing
    record("fsdp/sample/text_cache/2-2-1", _rel(run(net, "2-2-1", *cases["2-2-1"]), reference["2-2-1"]))

    try:  # Ulysses on more ranks than heads is refused with a pointer to ring attention
        ContextParallelWan(random_wan("tiny"), ParallelPlan("ulysses"), groups[False])
        refused = world <= 2
    except ValueError as err:
        refused = "ring" in str(err)
    record("ulysses_refuses_more_ranks_than_heads", 0.0 if refused else 1.0)
    report.write(path)


# ------------------------------------------------------------------------------- tests
def _launch(world: int, tmp_path: Path) -> dict[str, float]:
    report = tmp_path / f"context_parallel_{world}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           __file__, str(report)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(report.read_text())


def _expected_splits(world: int, schedule: str, label: str, cfg_parallel: bool) -> int:
    """Split forwards of one sampling run: the context group is half the ranks with the batch split."""
    ranks = world // 2 if cfg_parallel else world
    coarse, mid, full = SCHEDULES[schedule]
    if ranks == 1:
        return 0
    if label == "finest":
        return full
    return full + mid + (coarse if ranks <= 3 else 0)  # the coarsest stage has 3 tokens per frame


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_attention_and_sampling_equal_one_process(world, tmp_path):
    errors = _launch(world, tmp_path)
    assert len(errors) == 4 + 4 + 4 + 3 * len(SCHEDULES) * len(COMBINATIONS) + 1 + len(SCHEDULES) + 3, sorted(errors)
    bad = {}
    for name, err in errors.items():
        kind, _, rest = name.partition("/")
        if kind == "splits":
            schedule, _, label, cfg = rest.split("/")
            want = _expected_splits(world, schedule, label, cfg.endswith("True"))
            if err != want:
                bad[name] = (err, want)
            continue
        limit = {"attention": ATTENTION_TOL, "sample": SAMPLE_TOL}.get(kind, 0.0)
        limit = SAMPLE_TOL if name.startswith("fsdp/sample/") else limit  # else exact (0)
        limit = FSDP_SLACK if name.startswith("fsdp/stored") else limit
        if not err <= limit:
            bad[name] = err
    assert not bad, bad


def test_shard_sizes_cover_and_balance():
    for n in range(0, 20):
        for world in range(1, 9):
            sizes = shard_sizes(n, world)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="ranks"):
        shard_sizes(4, 0)


def test_per_frame_slice_follows_the_token_order():
    table = torch.arange(3 * 7).view(21, 1)  # (F*S, 1) with F=3, S=7, tokens ordered (f, s)
    assert per_frame_slice(table, 3, 4, 3).flatten().tolist() == [4, 5, 6, 11, 12, 13, 18, 19, 20]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attend_lse_matches_the_math(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen, dtype=dtype) for n in (5, 7, 7))
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    want, want_lse = torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)
    for fn in (attend_lse, _attend_lse_math):
        out, lse = fn(q, k, v)
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out, want, rtol=tol, atol=tol)
        torch.testing.assert_close(lse.to(dtype), want_lse, rtol=tol, atol=tol)


def test_plan_splits_by_threshold_and_explicit_stages():
    plan = ParallelPlan("ring", min_tokens=2048, stages=(((11, 28, 52), "replicate"),))
    # pyrflow's default 81 x 448 x 832: latent stages (21, 56, 104), (11, 28, 52), (6, 14, 26)
    assert plan.method_for((21, 56, 104), 30576, 1456, 8) == "ring"
    assert plan.method_for((11, 28, 52), 4004, 364, 8) == "replicate"  # explicit
    assert ParallelPlan().method_for((11, 28, 52), 4004, 364, 8) == "ulysses"
    assert ParallelPlan().method_for((6, 14, 26), 546, 91, 8) == "replicate"  # below the threshold
    assert ParallelPlan(min_tokens=0).method_for((2, 2, 6), 6, 3, 4) == "replicate"  # a rank would get no token
    assert ParallelPlan(min_tokens=0).method_for((2, 2, 6), 6, 3, 1) == "replicate"  # one rank
    with pytest.raises(ValueError, match="method"):
        ParallelPlan("flash")
    with pytest.raises(ValueError, match="replicate"):
        ParallelPlan(stages=(((1, 2, 2), "ulyses"),))


def test_self_attention_hook_routes_only_the_self_attention():
    from wan_fixtures import random_wan, wan_inputs

    from pyrflow_fast.wan import attention

    model = random_wan("tiny")
    x, t, ctx = wan_inputs(model.config, (3, 4, 6))
    calls = []

    def fn(q, k, v):
        calls.append(q.shape)
        return attention.attend(q, k, v)

    with torch.no_grad():
        want = model(x, t, ctx)
        with attention.self_attention(fn):
            got = model(x, t, ctx)
        assert model(x, t, ctx).equal(want) and len(calls) == model.config.num_layers  # restored on exit
    assert got.equal(want)
    assert all(shape == (2, 3 * 2 * 3, model.config.num_heads, model.config.head_dim) for shape in calls)


def test_doctests():
    import doctest

    import pyrflow_fast.parallel.context as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_bench_parallel_prints_the_plan_table():
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_parallel.py"),
        "--configs",
        "wan2.1-t2v-1.3b",
        "--ranks",
        "8",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2 + 3 * 3  # header, rule; 3 stages x (ulysses, ring, replicate)
    # 12 heads on 8 ranks: Ulysses' busiest rank has 2 heads, ring 1/8 of the queries
    assert out[2].startswith("| wan2.1-t2v-1.3b | 0 | 21x56x104 | 30576 | 8 | ulysses | 38.80 | 0.154 |")
    assert out[3].startswith("| wan2.1-t2v-1.3b | 0 | 21x56x104 | 30576 | 8 | ring | 31.62 | 0.126 |")
    plan = [row.split(" | ")[5] for row in out[2:] if row.endswith("| yes |")]
    assert plan == ["ulysses", "ulysses", "replicate"]


if __name__ == "__main__":
    _worker(sys.argv[1])
