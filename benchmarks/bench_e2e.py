"""End to end on one small CPU config: WanDiT vs diffusers' WanTransformer3DModel, and pyramidal vs plain.

``make bench`` runs it under pytest-benchmark (``--benchmark-enable``). Every comparison alternates
its two sides round by round in one run (:func:`timing.alternate`) and records the median of the
per-round ratios in the benchmark's ``extra_info``; times are reported, never asserted. As a
script it prints the tables recorded in benchmarks/RESULTS.md::

    .venv/bin/python benchmarks/bench_e2e.py [ROUNDS] [--compiled]
"""

import statistics
import sys

import pytest
import torch
from timing import Bench, alternate, build_model, compare, markdown, ratio

from pyrflow_fast.wan import WanConfig
from pyrflow_fast.wan.keys import to_diffusers_state_dict

# A small Wan (same architecture) on a 33x256x256-pixel-equivalent latent: 16 x 9 x 32 x 32.
CONFIG = WanConfig(dim=128, ffn_dim=512, freq_dim=64, num_heads=4, num_layers=4, text_dim=64, text_len=32)
SIZE = (9, 32, 32)
PAIRS = [("20-20-10", "0-0-50", 5.0), ("2-2-1", "0-0-2", None)]
# (label, latent F H W): 320 and 2,304 tokens, the coarse and the fine stage of SIZE's pyramid
FORWARD_SIZES = [("320 tokens", (5, 16, 16)), ("2304 tokens", SIZE)]


def diffusers_twin(model, dtype):
    """diffusers' WanTransformer3DModel with ``model``'s config and weights in ``dtype``, keeping float32
    what diffusers' ``from_pretrained(torch_dtype=dtype)`` keeps (its ``_keep_in_fp32_modules``)."""
    import diffusers

    kwargs = {k: v for k, v in model.config.to_diffusers_dict().items() if not k.startswith("_")}
    theirs = diffusers.WanTransformer3DModel.from_config(kwargs).eval().requires_grad_(False)
    sd = {k: v.float() for k, v in to_diffusers_state_dict(model.state_dict()).items()}
    theirs.load_state_dict(sd, strict=True, assign=True)
    keep = set(theirs._keep_in_fp32_modules or ())
    for name, p in theirs.named_parameters():
        if not keep.intersection(name.split(".")):
            p.data = p.data.to(dtype)
    return theirs


def model_vs_diffusers(dtype, size, rounds=5, compiled=False, device="cpu"):
    """Forward time of WanDiT / WanTransformer3DModel at one latent size: the median per-round ratio."""
    ours = build_model(CONFIG, torch.device(device), dtype)
    theirs = diffusers_twin(ours, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, CONFIG.in_dim, *size, generator=gen).to(device)
    t = torch.full((1,), 500.0, device=device)
    ctx = torch.randn(1, CONFIG.text_len, CONFIG.text_dim, generator=gen).to(device)
    x_d, ctx_d = x.to(dtype), ctx.to(dtype)  # diffusers takes inputs in its weights' dtype
    if compiled:
        ours, theirs = torch.compile(ours), torch.compile(theirs)

    @torch.no_grad()
    def run_ours():
        return ours(x, t, ctx)

    @torch.no_grad()
    def run_theirs():
        return theirs(x_d, t, ctx_d, return_dict=False)[0]

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    times = alternate({"wandit": run_ours, "diffusers": run_theirs}, sync, rounds)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": compiled,
        "wandit_s": statistics.median(times["wandit"]),
        "diffusers_s": statistics.median(times["diffusers"]),
        "ratio": ratio(times, "wandit", "diffusers"),
    }


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("label, size", FORWARD_SIZES, ids=[s[0] for s in FORWARD_SIZES])
def test_wandit_vs_diffusers(benchmark, dtype, label, size):
    pytest.importorskip("diffusers")
    benchmark.group = f"forward {label} {dtype}"
    # one timed run of the whole alternated comparison; its per-round ratio is the result
    row = benchmark.pedantic(model_vs_diffusers, args=(dtype, size), kwargs={"rounds": 5}, rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    assert row["wandit_s"] > 0 and row["diffusers_s"] > 0


def _forward_table(rows):
    lines = ["| tokens | dtype | compiled | WanDiT ms | diffusers ms | ratio |", "|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['dtype']} | {r['compiled']} | {1e3 * r['wandit_s']:.2f} | "
            f"{1e3 * r['diffusers_s']:.2f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(args[0]) if args else 5
    modes = [False, True] if "--compiled" in sys.argv else [False]
    print(f"{CONFIG}\nstage-0 latent {SIZE}, {torch.get_num_threads()} threads, {rounds} alternated rounds\n")
    rows = [
        (label, model_vs_diffusers(dtype, size, rounds, compiled))
        for compiled in modes
        for dtype in (torch.float32, torch.bfloat16)
        for label, size in FORWARD_SIZES
    ]
    print(_forward_table(rows) + "\n")
    print(markdown(compare(Bench(CONFIG, SIZE, torch.device("cpu")), PAIRS, repeats=rounds)))
