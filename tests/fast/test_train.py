"""Pyramidal finetuning: loss, trainer (resume, accumulation, LoRA, EMA), config, CLI, faults, evidence."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_fixtures import reseal
from launch_fixtures import sample_args

from pyrflow_fast.card import ModelCard
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.train import cli
from pyrflow_fast.train.checkpoint import ConfigMismatchError, latest_checkpoint
from pyrflow_fast.train.config import TrainConfig, load_config, synthetic_run
from pyrflow_fast.train.lora import load_card_lora, stage_lora_file
from pyrflow_fast.train.loss import PyramidalLoss, collate, draw, stage_of_slot
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.train.synthetic import SyntheticPyramids
from pyrflow_fast.wan import WanDiT
from pyrflow_fast.wan.checkpoint import load_wan, save_wan
from pyrflow_ref import natural as rn
from pyrflow_ref import process as rp
from pyrflow_ref import resample as rr
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

REPO = Path(__file__).resolve().parents[2]
PYRAMID = Pyramid.uniform("haar", (2, 2, 2), 3)
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)


def tiny_cfg(out, **sections):
    """A tiny synthetic run of 4 steps, checkpoints every 2; ``sections`` update it section by section."""
    base = {
        "data": {"synthetic_samples": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"steps": 4, "samples_per_stage": 1, "device": "auto", "precision": "auto"},
        "checkpoint": {"every": 2, "export": False},
    }
    return synthetic_run(out, **{k: {**base.get(k, {}), **sections.get(k, {})} for k in {*base, *sections}})


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.method.net.named_parameters()}


# ------------------------------------------------------------------------------------ loss
def linear_model(x_nat, t, context, full_size=None, stage=0):
    """A trivial 'backbone': affine in the input, the per-frame timestep and the context."""
    return 0.5 * x_nat + 1e-3 * t[:, None, :, None, None] + 0.1 * context.mean(dim=(1, 2))[:, None, None, None, None]


def test_loss_matches_numpy_reference_on_linear_model():
    ds = SyntheticPyramids(6, PYRAMID, size=(5, 8, 8))
    items = [ds[n] for n in range(6)]
    stages = [stage_of_slot(j, 3) for j in range(6)]
    draws = [draw(0, 0, j, tuple(items[j]["x0s"][stages[j]].shape)) for j in range(6)]
    total, groups = PyramidalLoss(PYRAMID, WINDOWS).batch_loss(linear_model, items, stages, draws)

    ref_pyr = rr.Pyramid(tuple(rr.Resampler("haar", (2, 2, 2), True) for _ in range(2)))
    expected = []
    for item, i, d in zip(items, stages, draws):
        x0s = [x.double().numpy()[None] for x in item["x0s"]]
        sc, sn = WINDOWS.sigma_c(i), WINDOWS.sigma_n(i)
        sigma = sc + d.rho * (sn - sc)
        x, tgt = rp.forward_sample(x0s, d.eps.double().numpy()[None], sigma, i, WINDOWS, ref_pyr)
        g = ref_pyr.gain(i, x.shape[-3])
        s_pf, g_pf = rn.per_frame(sigma, g)
        x_nat = x / rn.scale_c(s_pf, g_pf)
        t = 1000 * rn.varsigma(sigma, g)
        v_hat = 0.5 * x_nat + 1e-3 * t[None, None, :, None, None] + 0.1 * item["context"].double().numpy().mean()
        pred = rn.bridge_velocity(x, s_pf, g_pf, v_hat)
        expected.append(np.mean((pred - tgt) ** 2))
    assert [g.stage for g in groups] == [0, 1, 2]
    np.testing.assert_allclose(float(total), np.mean(expected), rtol=1e-5)
    per_stage = {i: np.mean([e for e, s in zip(expected, stages) if s == i]) for i in range(3)}
    for g in groups:
        np.testing.assert_allclose(float(g.mse.mean()), per_stage[g.stage], rtol=1e-5)


def test_single_stage_loss_is_wans_flow_matching_loss(make_wan):
    model = make_wan("tiny", seed=1)
    ds = SyntheticPyramids(4, PYRAMID, size=(5, 8, 8), text_dim=16)
    items = [ds[n] for n in range(4)]
    draws = [draw(3, 7, j, (4, 5, 8, 8)) for j in range(4)]
    loss = PyramidalLoss(Pyramid(()), StageWindows(()))

    def backbone(x_nat, t, context, full_size=None, stage=0):
        return model(x_nat, t, context)

    with torch.no_grad():
        total, _ = loss.batch_loss(backbone, items, [0] * 4, draws)
        x0 = torch.stack([it["x0s"][0] for it in items])
        eps = torch.stack([d.eps for d in draws])
        sigma = torch.tensor([d.rho for d in draws], dtype=torch.float64)
        s = sigma.float()[:, None, None, None, None]
        x = (1 - s) * x0 + s * eps
        ctx = torch.stack([it["context"] for it in items])
        v = model(x, (1000 * sigma).float(), ctx)
        wan = (v - (eps - x0)).pow(2).flatten(1).mean(1).mean()
    assert torch.equal(total, wan)


def test_distillation_term_is_mse_to_teacher_velocity():
    ds = SyntheticPyramids(3, PYRAMID, size=(5, 8, 8))
    items = [ds[n] for n in range(3)]
    d = [draw(0, 0, j, tuple(items[0]["x0s"][1].shape)) for j in range(3)]
    x0s, eps, rho, ctx = collate(items, d, 1, 3)
    loss = PyramidalLoss(PYRAMID, WINDOWS)
    same = loss.group_loss(linear_model, x0s, eps, rho, 1, ctx, teacher=linear_model)
    assert torch.equal(same.distill, torch.zeros(3))

    def zero(x_nat, t, context, full_size=None, stage=0):
        return torch.zeros_like(x_nat)

    g = loss.group_loss(linear_model, x0s, eps, rho, 1, ctx, teacher=zero)
    _, _, x_nat, t, coef = loss.inputs(x0s, eps, rho, 1)
    student = loss.bridge(x_nat, linear_model(x_nat, t, ctx), coef)
    teacher = loss.bridge(x_nat, torch.zeros_like(x_nat), coef)
    torch.testing.assert_close(g.distill, (student - teacher).pow(2).flatten(1).mean(1))


def test_draws_depend_on_seed_step_and_slot_only():
    a, b, c = draw(0, 1, 2, (2, 3)), draw(0, 1, 3, (2, 3)), draw(0, 2, 2, (2, 3))
    assert not torch.equal(a.eps, b.eps) and not torch.equal(a.eps, c.eps)
    assert torch.equal(a.eps, draw(0, 1, 2, (2, 3)).eps)
    assert sorted(stage_of_slot(j, 3) for j in range(3, 9)) == [0, 0, 1, 1, 2, 2]


# --------------------------------------------------------------------------------- trainer
def test_resume_is_bit_exact(tmp_path):
    extra = {
        "ema": {"decay": 0.9},
        "train": {"steps": 6, "gradient_checkpointing": True},
        "checkpoint": {"every": 3, "export": False},
    }
    straight = Runner(tiny_cfg(tmp_path / "a", **extra))
    hist_a = straight.fit()
    first = Runner(tiny_cfg(tmp_path / "b", **{**extra, "train": {"steps": 3, "gradient_checkpointing": True}}))
    hist_b = first.fit()
    assert latest_checkpoint(tmp_path / "b").name == "step_0000003"
    second = Runner(tiny_cfg(tmp_path / "b", **extra))
    hist_b += second.fit(resume=True)
    assert [m["step"] for m in hist_b] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in hist_a] == [m["loss"] for m in hist_b]
    pa, pb = params(straight), params(second)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert all(torch.equal(x, y) for x, y in zip(straight.ema["model"], second.ema["model"]))
    lines = lambda p: [json.loads(ln)["loss"] for ln in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    m = hist_a[-1]
    assert {"step", "loss", "loss_stage0", "loss_stage1", "loss_stage2", "lr", "grad_norm", "steps_per_s"} <= m.keys()


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    big = Runner(tiny_cfg(tmp_path / "a", train={"samples_per_stage": 2, "steps": 3}))
    acc = Runner(tiny_cfg(tmp_path / "b", train={"samples_per_stage": 1, "grad_accum": 2, "steps": 3}))
    ha, hb = big.fit(), acc.fit()
    np.testing.assert_allclose([m["loss"] for m in ha], [m["loss"] for m in hb], rtol=1e-5)
    pa, pb = params(big), params(acc)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-5)


def test_per_stage_lora_with_distillation_exports_merged_stages(tmp_path, make_wan):
    cfg = tiny_cfg(
        tmp_path,
        lora={"rank": 2, "per_stage": True},
        loss={"distill_weight": 0.5},
        optim={"lr": 1e-2, "warmup_steps": 0},
        train={"steps": 2},
        checkpoint={"every": 2, "export": True},
    )
    trainer = Runner(cfg, backbone=make_wan("tiny", seed=2, std=0.1))  # WanDiT's own init has a zero head
    base_before = {k: v.clone() for k, v in trainer.method.net.backbone.model.state_dict().items()}
    hist = trainer.fit()
    assert hist[0]["distill"] == 0.0 and hist[1]["distill"] > 0  # B starts at zero: student == teacher
    assert hist[0]["grad_norm"] > 0
    base_after = trainer.method.net.backbone.model.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert trainer.method.param_names and all(n.startswith("lora.") for n in trainer.method.param_names)
    export = tmp_path / "export"
    # the base plus one diffusers LoRA file per stage (pyrflow.json lists them), and the merged stages
    assert ModelCard.load(export).lora_files == tuple(stage_lora_file(i) for i in range(3))
    with_lora = load_wan(export)
    lora = load_card_lora(export, with_lora)
    x = torch.randn(1, 4, 3, 8, 8)
    t = torch.full((1, 3), 400.0)
    ctx = torch.randn(1, 4, 16)
    for stage in range(3):
        merged = load_wan(export / f"stage{stage}")
        assert ModelCard.load(export / f"stage{stage}").kind == "pyramidal"
        lora.select(stage)
        with torch.no_grad():
            want = trainer.method.net(x, t, ctx, stage=stage)
            torch.testing.assert_close(merged(x, t, ctx), want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(with_lora(x, t, ctx), want, rtol=1e-4, atol=1e-5)


def test_shared_lora_and_full_finetune_export_one_model_card(tmp_path):
    # the full finetune trains at shifted noise levels: its card samples there by default
    for name, lora, shift in (("shared", {"rank": 2}, None), ("full", {"rank": 0}, 2.0)):
        cfg = tiny_cfg(
            tmp_path / name,
            lora=lora,
            loss={"sigma_shift": shift or 1.0},
            train={"steps": 1, "precision": "bf16"},
            checkpoint={"every": 1, "export": True},
        )
        trainer = Runner(cfg)
        hist = trainer.fit()
        assert np.isfinite(hist[0]["loss"])
        card = ModelCard.load(tmp_path / name / "export")
        assert (card.kind, card.num_stages, card.boundaries) == ("pyramidal", 3, tuple(WAN_DEFAULT_BOUNDARIES))
        assert card.shift == shift
        model = load_wan(tmp_path / name / "export")
        x = torch.randn(1, 4, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(
                model(x, 300.0, torch.ones(1, 2, 16)),
                trainer.method.net(x, 300.0, torch.ones(1, 2, 16)),
                rtol=1e-4,
                atol=1e-5,
            )


def test_scaled_rope_gets_the_full_resolution_size_at_every_stage(tmp_path):
    trainer = Runner(tiny_cfg(tmp_path, model={"rope": "scaled"}, train={"steps": 1}))
    seen, forward = [], trainer.method.net.backbone.model.forward

    def spy(x, t, context, **kw):
        seen.append((tuple(x.shape[2:]), kw.get("full_size")))
        return forward(x, t, context, **kw)

    trainer.method.net.backbone.model.forward = spy
    trainer.train_step()
    assert seen == [((5, 16, 16), (5, 16, 16)), ((3, 8, 8), (5, 16, 16)), ((2, 4, 4), (5, 16, 16))]


def write_latent_cache(path, num=8, size=(5, 16, 16), channels=4, text_len=4, text_dim=16, **index):
    """A Definition-1 cache in pyrflow_fast.data.cache's format (one shard of synthetic latents)."""
    cache = pytest.importorskip("pyrflow_fast.data.cache")
    from safetensors.torch import save_file

    ds = SyntheticPyramids(num, PYRAMID, channels=channels, size=size, text_dim=text_dim, context_len=text_len)
    path.mkdir(parents=True)
    save_file(
        {
            "latents": ds.latents,
            "context": ds.contexts[torch.as_tensor(ds.labels)],
            "context_len": torch.full((num,), text_len, dtype=torch.int64),
        },
        str(path / cache.shard_name(0)),
    )
    meta = {
        "version": cache.CACHE_VERSION,
        "definition": 1,
        "num_samples": num,
        "num_stages": 3,
        "resampler": "haar",
        "factors": [2, 2, 2],
        "latent_shape": [channels, *size],
        "text_len": text_len,
        "text_dim": text_dim,
        "shards": [cache.shard_name(0)],
        "skipped": {},
        "source": {},
    }
    meta.update(index)
    (path / cache.INDEX_FILE).write_text(json.dumps(meta))
    return ds


def test_trains_from_a_latent_cache_like_from_the_same_data_in_memory(tmp_path):
    ds = write_latent_cache(tmp_path / "cache")
    cfg = tiny_cfg(tmp_path / "a", data={"kind": "cache", "path": str(tmp_path / "cache"), "latent_size": [5, 16, 16]})
    from_cache = Runner(cfg).fit()
    in_memory = Runner(tiny_cfg(tmp_path / "b"), dataset=ds).fit()
    np.testing.assert_allclose([m["loss"] for m in from_cache], [m["loss"] for m in in_memory], rtol=1e-6)
    with pytest.raises(ConfigMismatchError, match="latent_size"):
        Runner(tiny_cfg(tmp_path / "c", data={"kind": "cache", "path": str(tmp_path / "cache")}))
    write_latent_cache(tmp_path / "dct", resampler="dct")
    with pytest.raises(ConfigMismatchError, match="pyramid"):
        Runner(tiny_cfg(tmp_path / "d", data={"kind": "cache", "path": str(tmp_path / "dct"), "latent_size": []}))


# ---------------------------------------------------------------------------------- config
def test_default_config_toml_round_trip_and_documentation(tmp_path, capsys):
    assert cli.main(["--print-default-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "default.toml"
    path.write_text(text)
    assert load_config(path) == TrainConfig()
    cfg = TrainConfig()
    assert (cfg.train.steps, cfg.train.samples_per_stage, cfg.optim.lr, cfg.optim.warmup_steps) == (5000, 2, 1e-5, 500)
    assert text.count("\n# ") >= sum(1 for _ in TrainConfig.reference_markdown().splitlines()) - 2
    docs = (REPO / "docs" / "finetune.md").read_text()
    for row in TrainConfig.reference_markdown().splitlines()[2:]:
        assert row in docs, f"docs/finetune.md lacks (or has an outdated) config row: {row[:60]}"
    with pytest.raises(ValueError, match="unknown field 'optim.learning_rate'"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match="train.parallel"):
        TrainConfig.from_dict({"train": {"parallel": "zero3"}})


# ---------------------------------------------------------------------------------- faults
def test_checkpoint_that_does_not_match_the_config_is_a_clear_error(tmp_path):
    save_wan(WanDiT("tiny-3layer"), tmp_path / "ckpt")
    cfg = tiny_cfg(tmp_path / "run", model={"config": "tiny", "path": str(tmp_path / "ckpt")})
    with pytest.raises(ConfigMismatchError, match=r"in_dim|out_dim|text_dim") as err:
        Runner(cfg)
    assert "text_dim: checkpoint 12 vs config 16" in str(err.value)
    wrong = SyntheticPyramids(4, PYRAMID, channels=3, size=(5, 8, 8))
    with pytest.raises(ConfigMismatchError, match=r"in_dim=4"):
        Runner(tiny_cfg(tmp_path / "run"), dataset=wrong)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_pickle_payload_in_the_rng_file(tmp_path):
    extra = {"train": {"steps": 2}, "checkpoint": {"every": 2, "export": False}}
    Runner(tiny_cfg(tmp_path / "run", **extra)).fit()
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(tmp_path / "run")
    torch.save(_Payload(str(marker)), ckpt / "rng_rank0.pt")
    reseal(ckpt)  # whoever can write the folder can rewrite its manifest too
    with pytest.raises(Exception, match="Weights only load failed"):
        Runner(tiny_cfg(tmp_path / "run", **{**extra, "train": {"steps": 4}})).fit(resume=True)
    assert not marker.exists()


def test_unreadable_dataset_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-cache"
    cfg = tiny_cfg(tmp_path / "run", data={"kind": "cache", "path": str(missing)})
    if (
        importlib.util.find_spec("pyrflow_fast.data") is None
        or importlib.util.find_spec("pyrflow_fast.data.cache") is None
    ):
        expected, pattern = RuntimeError, "pyrflow_fast.data.cache"
    else:
        expected, pattern = FileNotFoundError, "no-such-cache"
    with pytest.raises(expected, match=pattern):
        Runner(cfg)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert cli.main(["--config", str(path)]) == 2
    assert pattern in capsys.readouterr().err


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", train={"steps": 6})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "PYRFLOW_TRAIN_CKPT_SLEEP": "4:120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyrflow_fast.train", "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(90, proc.kill)  # readline blocks: never wait longer than this
    watchdog.start()
    try:
        line = "start"
        while line and "sleeping" not in line:
            line = proc.stdout.readline()
        assert "sleeping" in line, "training ended (or hung) before the checkpoint write of step 4"
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / ".tmp-step_0000004" / "COMPLETE").is_file()  # killed between write and os.replace
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process: bit-exact resume is per thread count (matmul blocking)
    try:
        hist = Runner(cfg).fit(resume=True)
        assert [m["step"] for m in hist] == [3, 4, 5, 6]
        assert not (ckpts / ".tmp-step_0000004").exists()
        straight = Runner(tiny_cfg(tmp_path / "straight", train={"steps": 6})).fit()
    finally:
        torch.set_num_threads(threads)
    logged = [json.loads(ln)["loss"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [m["loss"] for m in straight]


# -------------------------------------------------------------------------------- evidence
@pytest.mark.slow
def test_evidence_pyramidal_finetune_lowers_pyramidal_validation_loss(tmp_path):
    from pyrflow_fast.train.evidence import run

    res = run(40, 40, weightings=("sigma",), samples=False, control=False, out_dir=tmp_path, log=lambda *a: None)
    assert res["pyramidal_sigma_val"]["total"] < res["base_val"]["total"]


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_export_is_a_model_directory_that_pyrflow_sample_loads(tmp_path, layout, capsys):
    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.sample import main as sample_main

    source = write_tiny_wan_dir(tmp_path / "wan", layout=layout)
    cfg = tiny_cfg(
        tmp_path / "run",
        model={"config": "", "path": str(source)},
        train={"steps": 1},
        data={"synthetic_size": [5, 8, 8], "synthetic_samples": 4},
        checkpoint={"every": 1, "export": True},
    )
    Runner(cfg).fit()
    export = tmp_path / "run" / "export"
    assert ModelCard.load(export).kind == "pyramidal"
    import diffusers  # diffusers' own loader reads it, from either source layout (test_export_layouts.py)

    assert isinstance(diffusers.WanPipeline.from_pretrained(export).scheduler, diffusers.UniPCMultistepScheduler)
    assert sample_main(sample_args(export, "a red car", tmp_path / "v.gif", "--schedule", "1-1-1")) == 0
    assert "euler 1-1-1" in capsys.readouterr().err
