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
import ctypes
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SCALED = dict(dim=1024, ffn_dim=4096, freq_dim=256, num_heads=8, num_layers=8, in_dim=4, out_dim=4)
SCALED.update(text_dim=64, text_len=8)


MMAP_THRESHOLD = 256 * 1024
"""glibc's ``MALLOC_MMAP_THRESHOLD_`` of the ranks (bytes): a fixed threshold turns off the dynamic one, under
which freed CPU tensors below 32 MB stay in malloc's arenas (measured: 0.4-1.1 GB per rank that the RSS never
gives back, whatever the world size), so the RSS follows the live tensors."""

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


PHASES = (
    "set-up (other)",
    "build on meta",
    "shard",
    "materialise",
    "load",
    "forward",
    "backward",
    "optimizer step",
    "checkpoint save",
    "export",
    "run (other)",
)
"""The phases of a run :class:`PhaseMeter` tells apart, in the order they first run (the RSS after importing
torch and pyrflow is the start every phase is measured from; ``run (other)``: the run outside these)."""


def _rss() -> int:
    """This process's resident set size in bytes (``/proc/self/statm``: resident pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _rss_file() -> int:
    """The file-backed part of this process's RSS in bytes (``RssFile``: mapped files such as safetensors)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    return 0


def _malloc() -> tuple[int, int]:
    """``(in use, free)`` bytes of glibc's malloc (``mallinfo2`` over every arena): handed out and not taken
    back (``uordblks`` plus the mmapped chunks ``hblkhd``; torch's CPU tensors among them), and freed but kept
    by malloc (``fordblks``). Zeros without glibc."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return 0, 0
    fn.restype = _MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd, info.fordblks


class PhaseMeter:
    """Peak resident memory of this process per phase of a run.

    A thread samples the RSS every ``interval`` seconds and keeps, per phase, the largest sample and, at that
    moment, the malloc bytes in use and free, and the file-backed RSS; at each phase change it adds the growth of
    ``ru_maxrss`` (the kernel's exact peak) to the phase that was running, so the growths sum to
    peak minus the RSS at :meth:`start`. Phases are entered by wrapping the functions of the run
    (:meth:`wrap`); leaving one returns to the phase it interrupted.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.stack = ["run (other)"]
        self.peak = {name: 0 for name in PHASES}
        self.at_peak = {name: (0, 0, 0) for name in PHASES}
        self.growth = {name: 0.0 for name in PHASES}
        self._maxrss = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.baseline = _rss()
        self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._record()
        self._thread.start()

    def stop(self) -> None:
        self._switch(None)
        self._stop.set()
        self._thread.join()

    def _record(self) -> None:
        rss, phase = _rss(), self.stack[-1]
        if rss > self.peak[phase]:
            self.peak[phase] = rss
            self.at_peak[phase] = (*_malloc(), _rss_file())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self._record()

    def _switch(self, push: str | None, pop: bool = False) -> None:
        with self._lock:
            self._record()
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.growth[self.stack[-1]] += maxrss - self._maxrss
            self._maxrss = maxrss
            if pop:
                self.stack.pop()
            if push is not None:
                self.stack.append(push)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Make ``owner.name`` (a function of a module or a method of a class) run as ``phase``."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            self._switch(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch(None, pop=True)

        setattr(owner, name, run)

    def report(self) -> dict[str, dict[str, float]]:
        """Per phase that ran (MB): ``peak_mb`` (largest RSS sample above the start's RSS); at that sample the
        malloc bytes ``in_use_mb`` and ``free_mb`` and the file-backed RSS ``file_mb``; ``growth_mb``: its
        share of the peak's growth since :meth:`start`."""
        return {
            name: {
                "peak_mb": (self.peak[name] - self.baseline) / 1e6,
                "in_use_mb": self.at_peak[name][0] / 1e6,
                "free_mb": self.at_peak[name][1] / 1e6,
                "file_mb": self.at_peak[name][2] / 1e6,
                "growth_mb": self.growth[name] / 1e6,
            }
            for name in PHASES
            if self.peak[name]
        }


def instrument(meter: PhaseMeter) -> None:
    """Wrap the functions of a run that mark its phases (the training path of every method)."""
    from torch import nn

    from pyrflow_fast.train import inputs, sharding
    from pyrflow_fast.train.methods import finetune
    from pyrflow_fast.train.methods.base import Method
    from pyrflow_fast.train.runner import Runner

    meter.wrap(Runner, "__init__", "set-up (other)")
    meter.wrap(sharding, "meta_backbone", "build on meta")
    for owner in (sharding, finetune):  # both call parallel.wan.shard_blocks by their own imported name
        meter.wrap(owner, "shard_blocks", "shard")
    meter.wrap(Method, "shard_root", "shard")
    meter.wrap(nn.Module, "to_empty", "materialise")
    for name in ("load_sharded_weights", "copy_shards", "init_like_new"):
        meter.wrap(sharding, name, "load")
    meter.wrap(inputs, "load_sharded_weights", "load")
    meter.wrap(Runner, "train_step", "forward")
    meter.wrap(torch.Tensor, "backward", "backward")
    meter.wrap(Runner, "update", "optimizer step")
    meter.wrap(Runner, "save_checkpoint", "checkpoint save")
    meter.wrap(Runner, "export", "export")


def state_bytes(runner) -> dict[str, int]:
    """Bytes this rank holds of the run's model state, counted from the tensors (each storage once):
    ``weights`` of every model the method holds (trained and frozen), ``gradients``, ``optimizer``
    (AdamW moments) and ``ema``."""
    from torch import nn

    seen: set[int] = set()

    def local(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or not storage.nbytes():
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    modules = [m for m in vars(runner.method).values() if isinstance(m, nn.Module)]
    modules += [role.module for role in runner.method.roles.values()]
    params = {id(p): p for m in modules for p in m.parameters()}
    out = {"weights": sum(local(p) for p in params.values())}
    out["gradients"] = sum(local(p.grad) for p in params.values() if p.grad is not None)
    out["optimizer"] = sum(
        local(v)
        for role in runner.method.roles.values()
        for s in role.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.numel() > 1
    )
    out["ema"] = sum(local(e) for shadow in runner.ema.values() for e in shadow)
    return out


def worker(config_path: str, method: str, phases: bool) -> None:
    """One rank: train, then print its peak resident memory (MB) as JSON (with ``phases``: per phase, and
    the model state it holds)."""
    from pyrflow_fast.distill.config import DistillConfig
    from pyrflow_fast.train.config import TrainConfig
    from pyrflow_fast.train.runner import Runner

    cls = TrainConfig if method == "finetune" else DistillConfig
    meter = PhaseMeter()
    if phases:
        instrument(meter)
        meter.start()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    runner = Runner(cls.from_dict(json.loads(Path(config_path).read_text())))
    runner.fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    row: dict[str, Any] = {"rank": runner.rank, "baseline_mb": baseline, "peak_mb": peak}
    if phases:
        meter.stop()
        row["phases"] = meter.report()
        row["state_mb"] = {k: v / 1e6 for k, v in state_bytes(runner).items()}
    print(json.dumps(row), flush=True)
    runner.close()


def _phase_table(world: int, ranks: list[dict]) -> str:
    """The ``--phases`` breakdown of one world size: per phase, each rank's peak RSS above its start and the
    malloc bytes in use at that moment (MB), and the phase's share of the rank's peak growth."""
    ranks = sorted(ranks, key=lambda r: r["rank"])
    head = " | ".join(f"rank {r['rank']}: peak / in use / free / file / growth" for r in ranks)
    lines = [f"world {world}", f"| phase | {head} |", "|---|" + "---|" * len(ranks)]
    for name in PHASES:
        cells = []
        for r in ranks:
            ph = r["phases"].get(name)
            keys = ("peak_mb", "in_use_mb", "free_mb", "file_mb", "growth_mb")
            cells.append("-" if ph is None else " / ".join(f"{ph[k]:.0f}" for k in keys))
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key in ranks[0]["state_mb"]:
        lines.append(f"| state: {key} | " + " | ".join(f"{r['state_mb'][key]:.0f}" for r in ranks) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--method", default="finetune", help="finetune, or a distillation variant (e.g. dmd-pt*)")
    parser.add_argument("--phases", action="store_true", help="break each rank's peak down by phase of the run")
    parser.add_argument("--export", action="store_true", help="export at the end (rank 0 gathers the model)")
    parser.add_argument("--json", type=Path, help="also write every rank's report to this JSON file")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (freed tensors below 32 MB stay in malloc's arenas and in the RSS)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.method, args.phases)
    per_param = STATE_BYTES.get(args.method, 36)
    from pyrflow_fast.wan import WanConfig, WanDiT
    from pyrflow_fast.wan.checkpoint import save_wan

    tmp = Path(tempfile.mkdtemp(prefix="fsdp_memory_"))
    try:
        torch.manual_seed(0)
        model = WanDiT(WanConfig(**SCALED))
        params = sum(p.numel() for p in model.parameters())
        save_wan(model, tmp / "base")
        del model
        rows, reports = [], {}
        for world in args.worlds:
            path = tmp / f"w{world}.json"
            config = _config(tmp / f"run{world}", tmp / "base", args.method)
            config["checkpoint"]["export"] = args.export
            path.write_text(json.dumps(config))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
            cmd += [str(Path(__file__).resolve()), "--worker", str(path), "--method", args.method]
            cmd += ["--phases"] if args.phases else []
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if not args.glibc_default:  # every tensor above 256 KiB is mmapped and returned to the OS when freed
                env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"world {world} failed:\n{proc.stderr[-3000:]}")
            ranks = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"rank"')]
            reports[world] = ranks
            grown = [r["peak_mb"] - r["baseline_mb"] for r in ranks]
            rows.append((world, statistics.median(grown), max(grown)))
            shutil.rmtree(tmp / f"run{world}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"method": args.method, "params": params, "worlds": reports}, indent=1))
    print(f"{args.method}, scaled model: {params / 1e6:.1f}M parameters, {params * 4 / 1e6:.0f} MB float32, ", end="")
    print(f"{per_param} B/param of state")
    head = f"state / rank (MB, {per_param} B/param / world)"
    print(f"| world | {head} | peak - baseline, median rank (MB) | max rank (MB) |")
    print("|---|---|---|---|")
    for world, med, top in rows:
        print(f"| {world} | {params * per_param / world / 1e6:.0f} | {med:.0f} | {top:.0f} |")
    if args.phases:
        for world, ranks in reports.items():
            print()
            print(_phase_table(world, ranks))


if __name__ == "__main__":
    main()
