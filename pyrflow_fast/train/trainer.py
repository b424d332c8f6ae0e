r"""Pyramidal finetuning of a Wan2.1 transformer: :class:`Trainer`.

One optimizer step consumes ``grad_accum`` micro-batches of the *global* batch of
``N = samples_per_stage * S * world_size`` samples. Slot ``j`` of a micro-batch trains stage
``j mod S`` (:func:`~pyrflow_fast.train.loss.stage_of_slot`), takes the dataset item at position
``data_pos + j`` of a seeded per-epoch permutation, and its draws come from ``(seed, step,
micro * N + j)``; rank ``r`` takes the contiguous slots ``[r n, (r + 1) n)``, ``n = N / world_size``,
which hold ``samples_per_stage`` samples of every stage. Nothing depends on the world size except
the split, so one process with ``samples_per_stage = 2 k`` and two with ``k`` see the same batch.

Each stage group of a micro-batch is one forward and one backward (so per-stage LoRA sets and
gradient checkpointing stay consistent); gradients are synchronised on the last backward of the
step only (``no_sync`` for DDP, ``set_requires_gradient_sync`` for FSDP2). The loss of a group is
the sum of its per-sample MSEs divided by the local samples of the step, so the accumulated
gradient is the gradient of the batch mean (DDP and FSDP average over ranks).

Checkpoints (``<output_dir>/checkpoints/step_<7-digit step>``) hold the trained parameters, optimizer,
scheduler, EMA, RNG states of every rank and the data position; they are written into a
temporary directory and moved into place with ``os.replace``, then the ``latest`` pointer file is
replaced the same way, so a run killed while writing leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from pyrflow_ref.windows import StageWindows

from ..contract import WanBackbone
from ..resample import Pyramid
from ..wan import WanDiT, get_config
from ..wan.checkpoint import assign_state_dict
from .config import TrainConfig
from .lora import LoRA
from .loss import PyramidalLoss, collate, draw, stage_of_slot

__all__ = ["ConfigMismatchError", "TrainModule", "Trainer", "build_dataset", "latest_checkpoint", "write_model_dir"]

CKPT_SLEEP_ENV = "PYRFLOW_TRAIN_CKPT_SLEEP"
"""Testing hook: ``"STEP:SECONDS"`` makes rank 0 sleep between writing the temporary checkpoint of
``STEP`` and moving it into place (to kill a run mid-write)."""


class ConfigMismatchError(ValueError):
    """The config, the checkpoint and the data do not describe the same model."""


# ------------------------------------------------------------------------------------ model
class TrainModule(nn.Module):
    """Backbone (+ LoRA) under one module: ``forward(x_nat, t, context, full_size, stage) -> v_hat``.

    DDP and FSDP wrap this module; ``stage`` selects the LoRA set.
    """

    def __init__(self, backbone: WanBackbone, lora: LoRA | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.lora = lora

    def forward(
        self, x_nat: torch.Tensor, t: torch.Tensor, context: torch.Tensor, full_size=None, stage: int = 0
    ) -> torch.Tensor:
        if self.lora is not None:
            self.lora.select(stage)
        return self.backbone(x_nat, t, context, full_size=full_size)


def _config_diff(a, b) -> list[str]:
    da, db = asdict(a), asdict(b)
    return [f"{k}: checkpoint {da[k]!r} vs config {db[k]!r}" for k in da if da[k] != db[k]]


def resolve_model_config(cfg: TrainConfig):
    """The architecture: ``model.config``, checked against the checkpoint's ``config.json`` (no weights read)."""
    named = get_config(cfg.model.config) if cfg.model.config else None
    if not cfg.model.path:
        if named is None:
            raise ConfigMismatchError("model.config must name an architecture when model.path is empty")
        return named
    from ..wan.checkpoint import read_config

    path = Path(cfg.model.path)
    if not path.exists():
        raise FileNotFoundError(f"model.path {path} does not exist")
    stored = read_config(path)
    if stored is None and named is None:
        raise ConfigMismatchError(f"{path} has no config.json; set model.config to its architecture")
    if stored is not None and named is not None and stored != named:
        diff = "; ".join(_config_diff(stored, named))
        raise ConfigMismatchError(f"model.path {path} does not match model.config {cfg.model.config!r}: {diff}")
    return stored or named


def load_backbone(cfg: TrainConfig) -> WanDiT:
    """The base WanDiT: from ``model.path`` (checked against ``model.config``) or randomly initialised."""
    arch = resolve_model_config(cfg)
    if not cfg.model.path:
        return WanDiT(arch)
    return WanDiT.from_pretrained(Path(cfg.model.path), config=arch)


def build_dataset(cfg: TrainConfig, pyramid: Pyramid, in_dim: int, text_dim: int) -> Dataset:
    """The training dataset of ``cfg.data`` (a latent cache or the synthetic family)."""
    if cfg.data.kind == "synthetic":
        from .synthetic import SyntheticPyramids

        return SyntheticPyramids(
            cfg.data.synthetic_samples,
            pyramid,
            channels=in_dim,
            size=tuple(cfg.data.synthetic_size),
            text_dim=text_dim,
            num_classes=cfg.data.synthetic_classes,
            seed=cfg.data.synthetic_seed,
        )
    try:
        from ..data.cache import LatentCache
    except ImportError as err:
        raise RuntimeError(
            f"data.kind = 'cache' needs the module pyrflow_fast.data.cache (LatentCache), which cannot be imported: {err}"
        ) from err
    if not cfg.data.path:
        raise FileNotFoundError("data.kind = 'cache' needs data.path, the cache directory")
    path = Path(cfg.data.path)
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"data.path {path} is not readable")
    return LatentCache(path)


def check_item(item: dict, pyramid: Pyramid, model_cfg, source: str) -> None:
    """Raise :class:`ConfigMismatchError` when a data item does not fit the model and pyramid."""
    for key in ("x0s", "context", "context_len"):
        if key not in item:
            raise ConfigMismatchError(f"{source}: items must have 'x0s', 'context' and 'context_len'; missing {key!r}")
    x0s = item["x0s"]
    s = pyramid.num_stages
    if len(x0s) < s:
        raise ConfigMismatchError(f"{source}: items carry {len(x0s)} stage signals, the pyramid has {s} stages")
    x0 = x0s[0]
    if x0.ndim != 4 or x0.shape[0] != model_cfg.in_dim:
        raise ConfigMismatchError(
            f"{source}: stage-0 signal has shape {tuple(x0.shape)}; the model takes (in_dim={model_cfg.in_dim}, F, H, W)"
        )
    expected = pyramid.shapes((1, *x0.shape))
    for i in range(s):
        if tuple(x0s[i].shape) != expected[i][1:]:
            raise ConfigMismatchError(
                f"{source}: stage {i} signal has shape {tuple(x0s[i].shape)}, the pyramid expects {expected[i][1:]}"
            )
        f, h, w = x0s[i].shape[-3:]
        if any(n % p for n, p in zip((f, h, w), model_cfg.patch_size)):
            raise ConfigMismatchError(
                f"{source}: stage {i} size {(f, h, w)} is not divisible by the patch {model_cfg.patch_size}"
            )
    ctx = item["context"]
    if ctx.ndim != 2 or ctx.shape[-1] != model_cfg.text_dim:
        raise ConfigMismatchError(
            f"{source}: context has shape {tuple(ctx.shape)}; the model takes (L, text_dim={model_cfg.text_dim})"
        )
    if int(item["context_len"]) > model_cfg.text_len:
        raise ConfigMismatchError(
            f"{source}: context_len {item['context_len']} exceeds the model's text_len {model_cfg.text_len}"
        )


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names (``None`` when there is none)."""
    ckpt = Path(output_dir) / "checkpoints"
    pointer = ckpt / "latest"
    if not pointer.is_file():
        return None
    path = ckpt / pointer.read_text().strip()
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which has no state.pt")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor (gathers a sharded DTensor)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def trim_metrics(path: Path, step: int) -> None:
    """Drop the lines of a JSONL metrics file past ``step`` (a resumed run rewrites them)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        _atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def write_model_dir(
    folder: Path,
    sd: dict[str, torch.Tensor],
    card,
    model_cfg,
    source_path: str = "",
    layout: str = "original",
    link_components: bool = True,
) -> None:
    """Write a WanDiT state dict ``sd`` of architecture ``model_cfg`` and its ModelCard ``card`` to ``folder``.

    When ``source_path`` is a full Wan2.1 directory and ``link_components`` is set, its layout is
    used and its VAE, text encoder and tokenizer are symlinked, so ``folder`` is a complete model
    directory for :mod:`pyrflow_fast.sample`.
    """
    with torch.device("meta"):
        model = WanDiT(model_cfg)
    assign_state_dict(model, {k: v.float() for k, v in sd.items()})
    source = Path(source_path) if source_path else None
    src_layout = None
    if link_components and source is not None and source.is_dir():
        from ..pipeline.layout import MissingFilesError, find_layout

        try:
            src_layout = find_layout(source, transformer=False)
        except MissingFilesError:
            src_layout = None
    if src_layout is not None:
        layout = src_layout
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, layout=layout)
    card.save(folder)
    if src_layout is not None:
        from ..pipeline.layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, ORIGINAL_VAE_CONFIG

        names = (
            ["text_encoder", "tokenizer", "vae", "model_index.json"]
            if src_layout == "diffusers"
            else [ORIGINAL_VAE, ORIGINAL_VAE_CONFIG, ORIGINAL_T5, ORIGINAL_TOKENIZER.split("/")[0]]
        )
        for n in names:
            if (source / n).exists() and not (folder / n).exists():
                os.symlink((source / n).resolve(), folder / n)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Finetune a WanDiT with the pyramidal loss.

    :param cfg: the configuration.
    :param dataset: any dataset of clean pyramids (default: :func:`build_dataset` of ``cfg``).
    :param backbone: the base WanDiT (default: :func:`load_backbone` of ``cfg``).
    """

    def __init__(self, cfg: TrainConfig, dataset: Dataset | None = None, backbone: WanDiT | None = None) -> None:
        self.cfg = cfg
        tc = cfg.train
        self._init_distributed()
        self.device = self._pick_device()
        torch.manual_seed(tc.seed)
        self.pyramid = Pyramid.uniform(
            cfg.pyramid.resampler, tuple(cfg.pyramid.factors), cfg.pyramid.num_stages, first_frame=True
        )
        self.windows = StageWindows(cfg.pyramid.boundaries)
        self.loss_fn = PyramidalLoss(self.pyramid, self.windows, cfg.loss.weighting)
        self.S = cfg.pyramid.num_stages

        # architecture and data are checked before any weights are read
        self.model_cfg = backbone.config if backbone is not None else resolve_model_config(cfg)
        self.dataset = (
            dataset
            if dataset is not None
            else build_dataset(cfg, self.pyramid, self.model_cfg.in_dim, self.model_cfg.text_dim)
        )
        if len(self.dataset) < 1:
            raise ValueError("the dataset is empty")
        data_pyramid = getattr(self.dataset, "pyramid", None)
        if data_pyramid is not None:
            have = [(lv.family, tuple(lv.factors)) for lv in data_pyramid.levels]
            want = [(lv.family, tuple(lv.factors)) for lv in self.pyramid.levels]
            if have[: len(want)] != want:
                raise ConfigMismatchError(
                    f"the dataset's pyramid levels {have} do not match the config's pyramid {want}"
                )
        first = self.dataset[0]
        check_item(first, self.pyramid, self.model_cfg, f"dataset ({cfg.data.kind})")
        if (
            cfg.data.kind == "cache"
            and cfg.data.latent_size
            and tuple(first["x0s"][0].shape[-3:]) != tuple(cfg.data.latent_size)
        ):
            raise ConfigMismatchError(
                f"data.path {cfg.data.path}: stage-0 latents are {tuple(first['x0s'][0].shape[-3:])}, "
                f"data.latent_size says {tuple(cfg.data.latent_size)} (set [] to accept any size)"
            )

        base = (backbone if backbone is not None else load_backbone(cfg)).to(self.device).float()
        base.set_gradient_checkpointing(tc.gradient_checkpointing)
        self.lora = None
        if cfg.lora.rank > 0:
            base.requires_grad_(False)
            self.lora = LoRA(base, cfg.lora.rank, cfg.lora.alpha, self.S if cfg.lora.per_stage else 1).to(self.device)
        self.teacher = None
        if cfg.loss.distill_weight > 0:
            self.teacher = self._build_teacher(base)
        self.net = TrainModule(WanBackbone(base, rope=cfg.model.rope), self.lora)
        self.wrapped = self._wrap(self.net)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema.decay > 0 else None
        self.step = 0
        self.data_pos = 0
        self._perms: dict[int, torch.Tensor] = {}
        self.out = Path(tc.output_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._barrier()

    # ---------------------------------------------------------------------- set-up pieces
    def _init_distributed(self) -> None:
        tc = self.cfg.train
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if tc.parallel == "none":
            if world > 1:
                raise ValueError(f"train.parallel = 'none' but WORLD_SIZE = {world}; set parallel to 'ddp' or 'fsdp'")
            self.rank, self.world, self.local_rank = 0, 1, 0
            return
        if not dist.is_initialized():
            backend = "nccl" if (torch.cuda.is_available() and tc.device != "cpu") else "gloo"
            dist.init_process_group(backend=backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def _pick_device(self) -> torch.device:
        d = self.cfg.train.device
        if d == "cpu" or (d == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ValueError("train.device = 'cuda' but CUDA is not available")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    @property
    def bf16(self) -> bool:
        p = self.cfg.train.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _build_teacher(self, base: WanDiT):
        cfg = self.cfg
        if cfg.model.teacher_path:
            t_cfg = copy.deepcopy(cfg)
            t_cfg.model.path = cfg.model.teacher_path
            teacher = load_backbone(t_cfg)
        elif self.lora is not None:
            teacher = None  # the base model with the adapters switched off
        else:
            teacher = copy.deepcopy(base)
        if teacher is not None:
            teacher = WanBackbone(teacher.to(self.device).float().eval().requires_grad_(False), rope=cfg.model.rope)

        def run(x_nat, t, context, full_size=None, stage=0):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                if teacher is not None:
                    return teacher(x_nat, t, context, full_size=full_size)
                with self.lora.disabled():  # through the wrapper: FSDP unshards the base there
                    return self.wrapped(x_nat, t, context, full_size, stage)

        return run

    def _wrap(self, net: TrainModule) -> nn.Module:
        mode = self.cfg.train.parallel
        if mode == "none":
            return net
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(net, device_ids=ids)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.bf16
            else MixedPrecisionPolicy()
        )
        if self.lora is None:  # with LoRA the adapters act inside the blocks: shard at the root only
            for block in net.backbone.model.blocks:
                fully_shard(block, mp_policy=mp)
        fully_shard(net, mp_policy=mp)
        return net

    def _lr_lambda(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        span = max(1, self.cfg.train.steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------------------ data
    @property
    def global_batch(self) -> int:
        """Samples per micro-batch over all processes."""
        return self.cfg.train.samples_per_stage * self.S * self.world

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.dataset), generator=gen)}
        return self._perms[epoch]

    def _index(self, ordinal: int) -> int:
        n = len(self.dataset)
        return int(self._perm(ordinal // n)[ordinal % n])

    def local_micro_batch(self, micro: int) -> tuple[list[dict], list[int], list]:
        """This rank's items, stages and draws of micro-batch ``micro`` of the current step."""
        tc = self.cfg.train
        n_local = tc.samples_per_stage * self.S
        items, stages, draws = [], [], []
        for j in range(self.rank * n_local, (self.rank + 1) * n_local):
            item = self.dataset[self._index(self.data_pos + j)]
            stage = stage_of_slot(j, self.S)
            shape = tuple(item["x0s"][stage].shape)
            items.append(item)
            stages.append(stage)
            draws.append(draw(tc.seed, self.step, micro * self.global_batch + j, shape, self.cfg.data.text_dropout))
        return items, stages, draws

    # -------------------------------------------------------------------------- training
    def _sync_context(self, sync: bool):
        import contextlib

        mode = self.cfg.train.parallel
        if mode == "ddp" and not sync:
            return self.wrapped.no_sync()
        if mode == "fsdp":
            self.wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns the step's metrics (global over ranks)."""
        tc = self.cfg.train
        n_local = tc.samples_per_stage * self.S * tc.grad_accum
        w = self.cfg.loss.distill_weight
        sums = torch.zeros(2 * self.S + 1, dtype=torch.float64)  # per-stage mse sums, counts, distill sum
        for micro in range(tc.grad_accum):
            items, stages, draws = self.local_micro_batch(micro)
            groups = sorted(set(stages))
            for gi, stage in enumerate(groups):
                idx = [n for n, s in enumerate(stages) if s == stage]
                x0s, eps, rho, ctx = collate(
                    [items[n] for n in idx], [draws[n] for n in idx], stage, self.S, self.device
                )
                last = micro == tc.grad_accum - 1 and gi == len(groups) - 1
                with self._sync_context(last):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                        g = self.loss_fn.group_loss(self.wrapped, x0s, eps, rho, stage, ctx, teacher=self.teacher)
                    loss = g.mse.sum()
                    if g.distill is not None:
                        loss = loss + w * g.distill.sum()
                    (loss / n_local).backward()
                sums[stage] += float(g.mse.detach().sum())
                sums[self.S + stage] += len(idx)
                if g.distill is not None:
                    sums[2 * self.S] += float(g.distill.detach().sum())
            self.data_pos += self.global_batch
        if self.world > 1:
            dist.all_reduce(sums)
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                if tc.parallel == "fsdp":  # sharded DTensors: one lerp per parameter
                    for e, p in zip(self.ema, self.params):
                        e.lerp_(p.detach(), 1 - self.cfg.ema.decay)
                else:
                    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - self.cfg.ema.decay)
        self.step += 1
        count = float(sums[self.S : 2 * self.S].sum())
        mse = float(sums[: self.S].sum()) / count
        metrics: dict[str, Any] = {"step": self.step, "loss": mse + w * float(sums[2 * self.S]) / count, "mse": mse}
        for i in range(self.S):
            metrics[f"loss_stage{i}"] = float(sums[i] / sums[self.S + i])
        if self.teacher is not None:
            metrics["distill"] = float(sums[2 * self.S]) / count
        metrics.update(lr=lr, grad_norm=float(norm), epoch=self.data_pos // len(self.dataset))
        return metrics

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``train.steps``, checkpointing and logging; returns the metrics of this call."""
        tc = self.cfg.train
        if resume:
            path = latest_checkpoint(self.out)
            if path is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
            self.load_checkpoint(path)
        self._trim_metrics()
        bar = None
        if tc.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, unit="step", desc="pyramidal finetune")
        history = []
        t0, s0 = time.perf_counter(), self.step
        try:
            while self.step < tc.steps:
                m = self.train_step()
                m["steps_per_s"] = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                history.append(m)
                if self.rank == 0 and (self.step % tc.log_every == 0 or self.step == tc.steps):
                    with open(self.out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(m) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4f}", steps_per_s=f"{m['steps_per_s']:.2f}")
                    bar.update()
                if self.step % self.cfg.checkpoint.every == 0 or self.step == tc.steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.cfg.checkpoint.export:
            self.export()
        return history

    def _trim_metrics(self) -> None:
        if self.rank == 0:
            trim_metrics(self.out / "metrics.jsonl", self.step)
        self._barrier()

    # ----------------------------------------------------------------------- checkpoints
    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<7-digit step>`` atomically and point ``latest`` at it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = self._state_options()
        model_sd = get_model_state_dict(self.net, options=opts)
        optim_sd = get_optimizer_state_dict(self.net, self.optimizer, options=opts)
        ema = {n: _full(t) for n, t in zip(self.param_names, self.ema)} if self.ema is not None else None
        root = self.out / "checkpoints"
        name = f"step_{self.step:07d}"
        tmp = root / f".tmp-{name}"
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self._barrier()
        torch.save(_rng_state(), tmp / f"rng_rank{self.rank}.pt")
        self._barrier()
        if self.rank == 0:
            state = {
                "step": self.step,
                "data_pos": self.data_pos,
                "epoch": self.data_pos // len(self.dataset),
                "index": self.data_pos % len(self.dataset),
                "world_size": self.world,
                "model": model_sd,
                "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(),
                "ema": ema,
                "config": self.cfg.to_json(),
            }
            torch.save(state, tmp / "state.pt")
            (tmp / "COMPLETE").write_text(name + "\n")
            hook = os.environ.get(CKPT_SLEEP_ENV, "")
            if hook and int(hook.split(":")[0]) == self.step:
                print(f"{CKPT_SLEEP_ENV}: sleeping before moving {tmp} into place", flush=True)
                time.sleep(float(hook.split(":")[1]))
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write_text(root / "latest", name + "\n")
            kept = sorted(p for p in root.glob("step_*") if p.is_dir())
            for old in kept[: -self.cfg.checkpoint.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return root / name

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (the same world size for bit-exact RNG)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path = Path(path)
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        for section, key in (("model", "config"), ("lora", "rank"), ("lora", "per_stage"), ("pyramid", "num_stages")):
            if saved[section][key] != getattr(getattr(self.cfg, section), key):
                raise ConfigMismatchError(
                    f"checkpoint {path} was trained with {section}.{key} = {saved[section][key]!r}, "
                    f"the config says {getattr(getattr(self.cfg, section), key)!r}"
                )
        opts = self._state_options()
        set_model_state_dict(self.net, state["model"], options=opts)
        set_optimizer_state_dict(self.net, self.optimizer, state["optimizer"], options=opts)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ConfigMismatchError(f"checkpoint {path} has no EMA, but ema.decay > 0")
            with torch.no_grad():
                for name, e, p in zip(self.param_names, self.ema, self.params):
                    full = state["ema"][name].to(self.device)
                    if hasattr(p, "device_mesh"):
                        from torch.distributed.tensor import distribute_tensor

                        full = distribute_tensor(full, p.device_mesh, p.placements)
                    e.copy_(full)
        self.step = int(state["step"])
        self.data_pos = int(state["data_pos"])
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=True))
        self._barrier()

    # ---------------------------------------------------------------------------- export
    def export(self) -> Path:
        """Write the finetuned transformer and ``pyrflow.json`` to ``<output_dir>/export``.

        Full finetune and shared LoRA: one checkpoint (LoRA merged). Per-stage LoRA:
        ``export/stage{i}`` for every stage (set ``i`` merged; exact at stage ``i`` only) plus the
        adapters in ``export/lora_adapters.safetensors``.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from ..sample import ModelCard

        full = get_model_state_dict(self.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.ema is not None and self.cfg.ema.export:
            for name, e in zip(self.param_names, self.ema):
                full[name] = _full(e)
        if self.rank != 0:
            self._barrier()
            return self.out / "export"
        prefix = "backbone.model."
        base_sd = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        out = self.out / "export"
        tmp = self.out / ".tmp-export"
        shutil.rmtree(tmp, ignore_errors=True)
        card = ModelCard(
            kind="pyramidal" if self.S > 1 else "base",
            num_stages=self.S,
            boundaries=tuple(self.cfg.pyramid.boundaries),
            resampler=self.cfg.pyramid.resampler,
            factors=tuple(self.cfg.pyramid.factors),
            rope=self.cfg.model.rope,
            uncond="zeros" if self.cfg.data.text_dropout > 0 else "prompt",
        )
        targets: list[tuple[Path, dict]] = []
        if self.lora is None:
            targets.append((tmp, base_sd))
        else:
            adapters = {k[len("lora.") :]: v for k, v in full.items() if k.startswith("lora.")}
            if self.lora.num_sets == 1:
                targets.append((tmp, self.lora.merged_state_dict(base_sd, 0, adapters)))
            else:
                from safetensors.torch import save_file

                tmp.mkdir(parents=True)
                save_file({k: v.contiguous() for k, v in adapters.items()}, str(tmp / "lora_adapters.safetensors"))
                for i in range(self.S):
                    targets.append((tmp / f"stage{i}", self.lora.merged_state_dict(base_sd, i, adapters)))
        for folder, sd in targets:
            self._write_model(folder, sd, card)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        self._barrier()
        return out

    def _write_model(self, folder: Path, sd: dict[str, torch.Tensor], card) -> None:
        write_model_dir(
            folder,
            sd,
            card,
            self.model_cfg,
            self.cfg.model.path,
            self.cfg.checkpoint.export_layout,
            self.cfg.checkpoint.link_components,
        )

    def close(self) -> None:
        """Tear down the process group this trainer created."""
        if self.cfg.train.parallel != "none" and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
