"""A torchrun worker of ``test_fsdp_sharded_methods``: build each method of a list of configs under FSDP,
report how its models are sharded, train it and report its losses.

``python -m torch.distributed.run ... tests/fast/fsdp_layout_worker.py CONFIGS.json OUT.json``: ``CONFIGS.json``
holds ``{"kind": "train" | "distill", "configs": [config dicts]}``; rank 0 writes to ``OUT.json`` one record per
config: ``{"layout": {model name: facts}, "metrics": [per-step metrics]}``. Facts per model: ``dtensors`` (every
parameter a DTensor), ``dtypes`` (its parameters' dtypes), ``adapters_in_blocks`` (every LoRA layer in its
block's FSDP group and none in the root's), ``max_local`` (the largest local shard, in elements).
"""

from __future__ import annotations

import json
import sys

import torch
from torch.distributed.fsdp import FSDPModule


def _state(module):
    return module._get_fsdp_state() if isinstance(module, FSDPModule) else None


def facts(model: torch.nn.Module, lora=None) -> dict:
    params = list(model.parameters())
    out = {
        "dtensors": all(hasattr(p, "device_mesh") for p in params),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "max_local": max((p.to_local().numel() for p in params if hasattr(p, "device_mesh")), default=0),
    }
    if lora is not None and hasattr(model, "blocks"):
        ok = all(hasattr(p, "device_mesh") for p in lora.parameters())
        for i, block in enumerate(model.blocks):
            ok &= all(_state(layer) is _state(block) is not None for layer in lora.block_layers(i))
        out["adapters_in_blocks"] = bool(ok)
    return out


def layout(method) -> dict:
    lora = getattr(method, "lora", None)
    models = {}
    if hasattr(method, "student"):
        models["student"] = (method.student, lora)
        for name in ("teacher_model", "original", "critic_model", "ppf_teacher"):
            if getattr(method, name, None) is not None:
                models[name] = (getattr(method, name), None)
        if hasattr(method, "disc"):
            models["disc_head"] = (method.disc.head, None)
    else:
        models["base"] = (method.net.backbone.model, lora)
        if method.teacher_model is not None:
            models["teacher"] = (method.teacher_model.model, None)
    return {name: facts(model, adapters) for name, (model, adapters) in models.items()}


def main(configs_path: str, out_path: str) -> None:
    from pyrflow_fast.distill.config import DistillConfig
    from pyrflow_fast.train.config import TrainConfig
    from pyrflow_fast.train.runner import Runner

    spec = json.loads(open(configs_path).read())
    cls = DistillConfig if spec["kind"] == "distill" else TrainConfig
    records, runner = [], None
    for data in spec["configs"]:
        runner = Runner(cls.from_dict(data))
        record = {"layout": layout(runner.method)}
        record["metrics"] = runner.fit()
        records.append(record)
    if runner.rank == 0:
        with open(out_path, "w") as fh:
            json.dump(records, fh)
    runner.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
