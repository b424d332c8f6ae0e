"""Per-rank peak host memory of an FSDP2 run read shard by shard, at several world sizes (CPU, gloo).

    .venv/bin/python benchmarks/fsdp_memory.py --worlds 1 2 4
    .venv/bin/python benchmarks/fsdp_memory.py --worlds 1 2 4 --method dmd-pt*

writes a scaled Wan2.1 transformer (dim 1024, 8 blocks, 134M parameters, 537 MB in float32) as a
safetensors checkpoint, then for each world size runs ``torchrun --nproc_per_node W`` of a full
finetune from it (``train.parallel = "fsdp"``, 2 steps, EMA on, a checkpoint at the end, no export,
which would gather the model on rank 0). Each rank reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after training, and the memory of a bare process that imported torch and pyrflow (the baseline
every rank pays). The table lists the median over ranks of peak minus baseline; the model's state
(weights, gradients, two AdamW moments and the EMA: 20 bytes per parameter) should fall as 1/world.

``--method`` names a distillation variant instead (``pyrflow_fast.train.methods.METHODS``): the same model
distilled with a fully trained student (no LoRA), 2 iterations of batch 1 per rank, the critic updated every
iteration, no teacher finetune: student and critic each 16 bytes per parameter (weights, gradients, two AdamW
moments), the frozen teacher (dmd-pt*: a copy of the student; float32 on the CPU) or the original (dmd-ot,
adv-od) 4: 36 bytes per parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALED = dict(dim=1024, ffn_dim=4096, freq_dim=256, num_heads=8, num_layers=8, in_dim=4, out_dim=4)
SCALED.update(text_dim=64, text_len=8)


STATE_BYTES = {"finetune": 20}
"""Bytes of training state per parameter (any other method: a distillation, 36)."""


def _distill_config(out: Path, base: Path, method: str) -> dict:
    from pyrflow_fast.distill.config import DistillConfig

    data = {
        "model": {"config": "", "path": str(base)},
        "pyramid": {"num_stages": 1, "boundaries": []},
        "data": {"kind": "synthetic", "synthetic_samples": 8, "synthetic_size": [1, 8, 8]},
        "distill": {
            "variant": method,
            "schedule": "2",
            "regression_schedule": "2",
            "lora_rank": 0,
            "critic_ratio": 1,
            "teacher_finetune_steps": 0,
            "ppf_patches": [[1, 2, 2]],
        },
        "optim": {"lr": 1e-4, "warmup_steps": 0},
        "train": {"output_dir": str(out), "steps": 2, "batch_size": 1, "progress": False, "parallel": "fsdp"},
        "checkpoint": {"every": 2, "export": False},
    }
    return DistillConfig.from_dict(data).to_dict()


def _config(out: Path, base: Path, method: str) -> dict:
    from pyrflow_fast.train.config import synthetic_run

    if method != "finetune":
        return _distill_config(out, base, method)

    return synthetic_run(
        out,
        model={"config": "", "path": str(base)},
        data={"synthetic_samples": 8, "synthetic_size": [1, 8, 8]},
        optim={"lr": 1e-4, "warmup_steps": 0},
        ema={"decay": 0.9},
        train={
            "steps": 2,
            "samples_per_stage": 1,
            "gradient_checkpointing": True,
            "precision": "auto",
            "parallel": "fsdp",
        },
        checkpoint={"every": 2, "export": False},
        pyramid={"num_stages": 1, "boundaries": []},
    ).to_dict()


def worker(config_path: str, method: str) -> None:
    """One rank: train, then print its peak resident memory (MB) as JSON."""
    from pyrflow_fast.distill.config import DistillConfig
    from pyrflow_fast.train.config import TrainConfig
    from pyrflow_fast.train.runner import Runner

    cls = TrainConfig if method == "finetune" else DistillConfig
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runner = Runner(cls.from_dict(json.loads(Path(config_path).read_text())))
    runner.fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rank": runner.rank, "baseline_mb": baseline, "peak_mb": peak}), flush=True)
    runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--method", default="finetune", help="finetune, or a distillation variant (e.g. dmd-pt*)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.method)
    per_param = STATE_BYTES.get(args.method, 36)
    import torch

    from pyrflow_fast.wan import WanConfig, WanDiT
    from pyrflow_fast.wan.checkpoint import save_wan

    tmp = Path(tempfile.mkdtemp(prefix="fsdp_memory_"))
    torch.manual_seed(0)
    model = WanDiT(WanConfig(**SCALED))
    params = sum(p.numel() for p in model.parameters())
    save_wan(model, tmp / "base")
    del model
    rows = []
    for world in args.worlds:
        path = tmp / f"w{world}.json"
        path.write_text(json.dumps(_config(tmp / f"run{world}", tmp / "base", args.method)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
        cmd += [str(Path(__file__).resolve()), "--worker", str(path), "--method", args.method]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"world {world} failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"rank"')]
        grown = [r["peak_mb"] - r["baseline_mb"] for r in ranks]
        rows.append((world, statistics.median(grown), max(grown), statistics.median(r["peak_mb"] for r in ranks)))
    print(f"{args.method}, scaled model: {params / 1e6:.1f}M parameters, {params * 4 / 1e6:.0f} MB float32, ", end="")
    print(f"{per_param} B/param of state")
    head = f"state / rank (MB, {per_param} B/param / world)"
    print(f"| world | {head} | peak - baseline, median rank (MB) | max rank (MB) |")
    print("|---|---|---|---|")
    for world, med, top, _ in rows:
        print(f"| {world} | {params * per_param / world / 1e6:.0f} | {med:.0f} | {top:.0f} |")


if __name__ == "__main__":
    main()
