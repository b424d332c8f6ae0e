"""``pyrflow-sample`` under ``torchrun`` on 2 gloo processes writes the latents one process writes.

One ``torchrun`` launch of this file (the worker) runs the sampling CLI's entry point
(:func:`pyrflow_fast.sample.main`, what ``python -m pyrflow_fast.sample`` runs) once per argument list,
in one process group; the one-process runs are the same CLI in the test process:

- ``cfg``: the tiny Wan with ``--context-parallel ulysses --cfg-parallel`` (each rank one CFG branch), a
  pyramidal schedule with CFG;
- ``ppf``: a tiny PPF checkpoint (distilled, few-step ``2-2-1``) with ``--context-parallel ulysses
  --min-split-tokens 0``: the stages with a token per rank split;
- ``sharded``: the scaled 14B of ``test_parallel_14b`` (weights in several files with an index, as the 14B's)
  with ``--context-parallel ring --min-split-tokens 0 --shard-blocks --t5-cpu``.

The worker wraps :func:`~pyrflow_fast.sample.generate` to record the largest share of the transformer's block
weights a rank stores when sampling starts (1 unless sharded) and counts the forwards that split their tokens
(per split method); rank 0 writes them per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

SAMPLE_TOL = 1e-5  # float32, relative (norm of the difference over the norm)
FSDP_SLACK = 0.02  # the largest share of the blocks' weights a rank may store beyond 1/N
PPF_PATCHES = ((1, 2, 2), (1, 4, 4), (1, 8, 8))


def _worker(spec: str, report: str) -> None:
    import torch.distributed as dist

    import pyrflow_fast.parallel.wan as cp_wan
    import pyrflow_fast.sample as sample
    from pyrflow_fast.parallel import join, leave

    torch.set_num_threads(1)
    join()  # the worker's group: every CLI run below samples in it and leaves it to the worker
    stored, splits = [], []
    real, attention = sample.generate, cp_wan.context_attention
    cp_wan.context_attention = lambda *args: (splits.append(args[0]), attention(*args))[1]

    def generate(components, *args, **kwargs):
        params = list(components.transformer.blocks.parameters())
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
        stored.append(local / sum(p.numel() for p in params))
        return real(components, *args, **kwargs)

    sample.generate = generate
    facts = {}
    for name, argv in json.loads(Path(spec).read_text()).items():
        stored.clear()
        splits.clear()
        assert sample.main(argv) == 0, name
        share = torch.tensor(stored, dtype=torch.float64)
        dist.all_reduce(share, op=dist.ReduceOp.MAX)
        facts[name] = {"stored": float(share.max()), "splits": sorted(set(splits)), "split_forwards": len(splits)}
    if dist.get_rank() == 0:
        Path(report).write_text(json.dumps(facts))
    leave()


def write_tiny_ppf_dir(path: Path) -> Path:
    """The tiny Wan directory made a distilled PPF checkpoint: its card and random per-stage layers."""
    from pipeline_fixtures import write_tiny_wan_dir
    from safetensors.torch import save_file

    from pyrflow_fast.card import PPF_FILE, ModelCard
    from pyrflow_fast.ppf import PPFWan
    from pyrflow_fast.wan.checkpoint import load_wan

    write_tiny_wan_dir(path, seed=1)
    ModelCard(kind="distilled", ppf_patches=PPF_PATCHES).save(path)
    ppf = PPFWan(load_wan(path), PPF_PATCHES)
    gen = torch.Generator().manual_seed(4)
    layers = {}
    for name, p in ppf.state_dict().items():
        if not name.startswith("model."):  # the shared transformer's are in the folder already
            layers[name] = (p + 0.2 * torch.randn(p.shape, generator=gen)).contiguous()
    save_file(layers, str(path / PPF_FILE))
    return path


@pytest.mark.slow
def test_sample_cli_on_two_ranks_equals_one_process(tmp_path):
    from launch_fixtures import run_torchrun, sample_args
    from pipeline_fixtures import write_tiny_wan_dir
    from safetensors.torch import load_file
    from test_parallel_14b import write_scaled_14b_dir

    from pyrflow_fast.sample import main

    models = {
        "cfg": write_tiny_wan_dir(tmp_path / "wan"),
        "ppf": write_tiny_ppf_dir(tmp_path / "ppf"),
        "sharded": write_scaled_14b_dir(tmp_path / "wan14b", max_shard_size="12MB"),
    }
    assert len(list((models["sharded"] / "transformer").glob("*.safetensors"))) > 1
    common = {"cfg": ["--schedule", "2-1-2", "--guidance-scale", "4"], "ppf": [], "sharded": ["--schedule", "2-1-2"]}
    parallel = {
        "cfg": ["--context-parallel", "ulysses", "--cfg-parallel"],
        "ppf": ["--context-parallel", "ulysses", "--min-split-tokens", "0"],
        "sharded": ["--context-parallel", "ring", "--min-split-tokens", "0", "--shard-blocks", "--t5-cpu"],
    }

    def args(name, ranks):
        out = ("--save-latents", str(tmp_path / f"{name}{ranks}.safetensors"), "--seed", "3", *common[name])
        return sample_args(models[name], "a red car", tmp_path / f"{name}{ranks}.gif", *out)

    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps({name: args(name, 2) + extra for name, extra in parallel.items()}))
    run_torchrun(__file__, str(spec), str(tmp_path / "report.json"), timeout=240)
    facts = json.loads((tmp_path / "report.json").read_text())
    assert facts["cfg"]["stored"] == facts["ppf"]["stored"] == 1.0, facts
    assert facts["sharded"]["stored"] <= 0.5 + FSDP_SLACK, facts
    # cfg: each rank alone in its context group, nothing splits; ppf (2-2-1) and sharded (2-1-2): the two finer
    # stages' forwards (the coarsest has 1 token per frame)
    assert facts["cfg"]["split_forwards"] == 0, facts
    assert facts["ppf"]["splits"] == ["ulysses"] and facts["ppf"]["split_forwards"] == 2 + 1, facts
    assert facts["sharded"]["splits"] == ["ring"] and facts["sharded"]["split_forwards"] == 1 + 2, facts
    for name in models:
        assert main(args(name, 1)) == 0
        one, two = (load_file(str(tmp_path / f"{name}{r}.safetensors"))["latents"] for r in (1, 2))
        assert float((one - two).norm() / one.norm()) <= SAMPLE_TOL, name
        assert (tmp_path / f"{name}2.gif").is_file()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--offload", "--shard-blocks"], "--offload and --shard-blocks: pick one"),
        (["--shard-blocks"], "--shard-blocks acts on the ranks that split the tokens: add --context-parallel"),
        (["--min-split-tokens", "0"], "--min-split-tokens acts on the ranks that split the tokens"),
        (["--min-split-tokens", "-1", "--context-parallel", "ring"], "--min-split-tokens must be >= 0, got -1"),
        (["--shard-blocks", "--context-parallel", "ring"], "but this is a single process: run torchrun"),
    ],
)
def test_cli_shard_blocks_misuse_fails_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    import pyrflow_fast.sample as sample_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI loaded weights before refusing")

    monkeypatch.setattr(sample_mod, "load_components", refuse)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exc:
        sample_mod.main(["--model-dir", str(tmp_path), "--prompt", "a red car", "--out", str(tmp_path / "v.mp4"),
                         *extra])  # fmt: skip
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("kwargs", [{"shard_blocks": True}, {"min_split_tokens": 0}])
def test_generate_refuses_sharding_options_without_context_parallel(kwargs):
    from types import SimpleNamespace

    from pyrflow_fast.sample import generate

    components = SimpleNamespace(transformer=torch.nn.Linear(1, 1))  # refused before it is looked at
    with pytest.raises(ValueError, match="act on the ranks that split the tokens: pass context_parallel='ulysses'"):
        generate(components, "a red car", **kwargs)


@pytest.fixture
def one_rank():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_load_sharded_wan_reads_the_weights_load_wan_reads(layout, tmp_path, one_rank):
    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.parallel import blocks_sharded, load_sharded_wan
    from pyrflow_fast.wan.checkpoint import load_wan

    path = write_tiny_wan_dir(tmp_path / layout, layout=layout)
    for dtype in (torch.float32, torch.bfloat16):
        want = load_wan(path, dtype=dtype).state_dict()
        model = load_sharded_wan(path, device="cpu", dtype=dtype)
        assert blocks_sharded(model) and not model.training
        for key, value in model.state_dict().items():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            assert value.dtype == dtype and torch.equal(value, want[key]), key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fails", [False, True])
def test_cli_leaves_the_process_group_it_joined_and_keeps_a_callers(fails, tmp_path, monkeypatch):
    """A rank that exits with its gloo group still up can abort ("terminate called without an active exception"):
    the CLI leaves the group it joined, after its run or its error, and leaves a caller's group up."""
    import torch.distributed as dist
    from launch_fixtures import sample_args
    from pipeline_fixtures import write_tiny_wan_dir

    import pyrflow_fast.sample as sample_mod

    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if fails:

        def generate(*args, **kwargs):  # joins as the real one does, then fails
            from pyrflow_fast.parallel import join

            join()
            raise ValueError("refused after joining")

        monkeypatch.setattr(sample_mod, "generate", generate)
    argv = sample_args(write_tiny_wan_dir(tmp_path / "wan"), "a red car", tmp_path / "v.gif", "--schedule", "1-1-1")
    argv += ["--context-parallel", "ulysses"]
    for caller in (False, True):
        if caller:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            if fails:
                with pytest.raises(SystemExit):
                    sample_mod.main(argv)
            else:
                assert sample_mod.main(argv) == 0
            assert dist.is_initialized() == caller
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
