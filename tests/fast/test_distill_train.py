"""Distillation: roll-outs (the stopped few-step sampler), the runner's distillation methods, CLI, export, evidence."""

import json

import numpy as np
import pytest
import torch
from launch_fixtures import sample_args, torchrun
from wan_fixtures import random_wan

from pyrflow_fast.card import ModelCard
from pyrflow_fast.contract import FrozenDenoiser
from pyrflow_fast.distill.cli import main as distill_main
from pyrflow_fast.distill.config import VARIANTS, DistillConfig
from pyrflow_fast.distill.dmd import score_sigmas
from pyrflow_fast.resample import Pyramid
from pyrflow_fast.samplers import sample_few_step
from pyrflow_fast.train.methods import dmd as dmd_methods
from pyrflow_fast.train.methods import ppf as ppf_methods
from pyrflow_fast.train.methods.ppf import ppf_finetune
from pyrflow_fast.train.runner import Runner
from pyrflow_fast.wan.checkpoint import load_wan, save_wan
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

PYRAMID = Pyramid.uniform("haar", (2, 2, 2), 3)
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)


def affine_model(x_nat, t, cond):
    """A cheap stand-in backbone: affine in the input and the timestep."""
    return 0.7 * x_nat - 0.3 + 1e-3 * t[:, None, :, None, None]


# -------------------------------------------------------------------------------- rollout
@pytest.mark.parametrize("schedule", ["2-2-1", "1-1-1", "0-0-2"])
def test_rollout_to_the_last_step_is_the_few_step_sampler(schedule):
    steps = tuple(int(n) for n in schedule.split("-"))
    top = 2 - next(k for k, n in enumerate(steps) if n > 0)
    noise = torch.randn(PYRAMID.shapes((2, 4, 5, 8, 8))[top], generator=torch.Generator().manual_seed(0))
    ref = sample_few_step(
        affine_model, noise, PYRAMID, WINDOWS, schedule, shift=5.0, rng=torch.Generator().manual_seed(1)
    )
    x0, stage, _, _, _ = sample_few_step(
        affine_model,
        noise,
        PYRAMID,
        WINDOWS,
        schedule,
        shift=5.0,
        rng=torch.Generator().manual_seed(1),
        stop=sum(steps) - 1,
    )
    assert stage == 0
    torch.testing.assert_close(x0, ref)


def test_rollout_stages_and_gradient():
    noise = torch.randn(PYRAMID.shapes((1, 4, 5, 8, 8))[2])
    w = torch.tensor(0.7, requires_grad=True)

    def model(x_nat, t, cond):
        return w * x_nat

    stages = []
    for k in range(5):
        x0, stage, process, _, _ = sample_few_step(
            model, noise, PYRAMID, WINDOWS, "2-2-1", rng=torch.Generator().manual_seed(0), stop=k
        )
        stages.append(stage)
        assert process.sigma_c == WINDOWS.sigma_c(stage) and process.sigma_n == WINDOWS.sigma_n(stage)
        assert x0.requires_grad
    assert stages == [2, 2, 1, 1, 0]
    with torch.no_grad():
        x0 = sample_few_step(model, noise, PYRAMID, WINDOWS, "2-2-1", stop=3).x0
    assert not x0.requires_grad
    with pytest.raises(ValueError, match="outside"):
        sample_few_step(model, noise, PYRAMID, WINDOWS, "2-2-1", stop=5)


def test_ppf_rollout_to_the_last_step_is_sample_ppf(tiny_model):
    from pyrflow_fast.ppf import PPFWan, ppf_stages, sample_ppf

    ppf = PPFWan(tiny_model)
    noise = torch.randn(2, 4, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 3, tiny_model.config.text_dim)
    with torch.no_grad():
        ref = sample_ppf(
            ppf, noise, ctx, WINDOWS, "2-2-1", shift=5.0, few_step=True, rng=torch.Generator().manual_seed(1)
        )
    x0, stage, process, _, _ = sample_few_step(
        ppf_stages(ppf),
        noise,
        None,
        WINDOWS,
        "2-2-1",
        cond=ctx,
        shift=5.0,
        rng=torch.Generator().manual_seed(1),
        stop=4,
    )
    assert stage == 0 and process.sigma_c == 0.0 and process.sigma_n == 1.0 and x0.requires_grad
    torch.testing.assert_close(x0, ref)
    with torch.no_grad():
        stages = [
            sample_few_step(ppf_stages(ppf), noise, None, WINDOWS, "2-2-1", cond=ctx, stop=k)[1] for k in range(5)
        ]
    assert stages == [2, 2, 1, 1, 0]


def test_ppf_diffusion_finetune_lowers_the_per_level_loss():
    from pyrflow_fast.ppf import PPFWan

    ppf = PPFWan(random_wan("tiny", seed=1, std=0.05))
    gen = torch.Generator().manual_seed(0)
    batch = ([torch.randn(2, 4, 2, 16, 16, generator=gen)], torch.randn(2, 3, 16, generator=gen))
    emb = ppf.stage_embedding.detach().clone()
    losses = ppf_finetune(ppf, lambda n: batch, WINDOWS, 15, 3e-3)
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert not torch.equal(emb, ppf.stage_embedding)


def test_frozen_denoiser_returns_ordinary_tensors():
    lin = torch.nn.Linear(2, 2)
    out = FrozenDenoiser(lin)(torch.ones(1, 2))
    assert not out.is_inference() and not out.requires_grad
    (torch.ones(1, 2, requires_grad=True) * out).sum().backward()  # usable in autograd


# --------------------------------------------------------------------------------- config
def test_config_round_trips_and_documents_every_field():
    import tomllib

    cfg = DistillConfig()
    assert DistillConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    text = cfg.to_toml()
    for section in ("model", "pyramid", "data", "distill", "optim", "checkpoint", "train"):
        assert f"[{section}]" in text
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[n - 1].startswith("# ") and len(lines[n - 1]) > 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"distill": {"variant": "dmd-xyz"}}, "unknown distillation variant 'dmd-xyz'"),
        ({"distill": {"variant": "PPF"}}, "unknown distillation variant 'PPF'"),
        ({"distill": {"schedule": "2-1"}}, "do not fit the model's 3 pyramid stages"),
        ({"pyramid": {"num_stages": 2, "boundaries": [0.5]}}, "do not fit the model's 2 pyramid stages"),
        ({"distill": {"schedule": "0-0-0"}}, "at least one step"),
        ({"distill": {"critic_ratio": 0}}, "critic_ratio"),
        ({"distill": {"variant": "ppf", "ppf_patches": [[1, 2, 2], [1, 4, 4]]}}, "one patch per pyramid stage"),
        ({"distill": {"lr": 1}}, "unknown field 'distill.lr'"),
    ],
)
def test_config_errors(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        DistillConfig.from_dict(override)


def test_cli_errors_and_default_config(capsys):
    assert distill_main(["--print-default-config"]) == 0
    printed = capsys.readouterr().out
    assert 'variant = "dmd-pt*"' in printed and "critic_ratio = 5" in printed
    for args, message in [
        (["--variant", "dmd-foo"], "unknown distillation variant"),
        (["--variant", "dmd-pt", "--schedule", "2-2"], "do not fit"),
    ]:
        with pytest.raises(SystemExit) as err:
            distill_main(args)
        assert err.value.code == 2
        assert message in capsys.readouterr().err
    assert set(VARIANTS) == {"dmd-ot", "dmd-pt", "dmd-pt*", "adv-od", "adv-pd", "ppf"}


# ---------------------------------------------------------------------------- end to end
def tiny_cfg(out, path, **sections):
    data = {
        "model": {"config": "tiny", "path": str(path)},
        "data": {"kind": "synthetic", "synthetic_samples": 4, "synthetic_size": [5, 8, 8]},
        "distill": {
            "lora_rank": 2,
            "critic_ratio": 2,
            "guidance": 2.0,
            "regression_schedule": "1-1-1",
            "teacher_finetune_steps": 2,
            "disc_hidden": 8,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"output_dir": str(out), "steps": 3, "batch_size": 2, "progress": False},
        "checkpoint": {"every": 2, "export": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return DistillConfig.from_dict(data)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_wan(random_wan("tiny", seed=3, std=0.1), path)
    return path


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_the_student_only(tmp_path, model_path, variant):
    run = Runner(tiny_cfg(tmp_path, model_path, distill={"variant": variant}))
    d = run.method
    base = {k: v.clone() for k, v in d.student.state_dict().items()}
    lora = {k: v.clone() for k, v in d.lora.state_dict().items()}
    teacher = load_wan(model_path).state_dict()  # what the original teacher was loaded from
    critic = (
        d.disc.features.model
        if variant.startswith("adv")
        else (d.critic_model.model if variant == "ppf" else d.critic_model)
    )
    assert d.student.gradient_checkpointing and critic.gradient_checkpointing  # train.gradient_checkpointing default
    history = run.fit()
    assert [("generator_loss" in m) for m in history] == [True, False, True]  # critic ratio 2
    assert all(m["grad_norm"] > 0 for m in history if "grad_norm" in m)
    assert all(torch.equal(v, d.student.state_dict()[k]) for k, v in base.items())  # LoRA: base frozen
    assert any(not torch.equal(v, d.lora.state_dict()[k]) for k, v in lora.items())
    if variant == "dmd-ot":  # the original teacher was finetuned (multi-resolution FM), then frozen
        assert d.teacher_losses and all(torch.isfinite(torch.tensor(d.teacher_losses)))
        assert any(not torch.equal(v, d.original.state_dict()[k]) for k, v in teacher.items())
        assert not any(p.requires_grad for p in d.original.parameters())
    if variant == "ppf":  # PPF diffusion finetune of the teacher, then DMD with PPF student / teacher / critic
        assert d.teacher_losses and d.ppf_student is not None
        assert d.ppf_student.stage_embedding.requires_grad and not d.ppf_teacher.stage_embedding.requires_grad
        assert "dmd" in history[0] and "regression" in history[0]
    elif variant.startswith("dmd"):
        assert "dmd" in history[0] and "regression" in history[0]
        if variant != "dmd-ot":
            assert d.teacher_model is None  # PT / PT* with LoRA: the teacher is the base, adapters off
    else:
        assert "adversarial" in history[0] and "reconstruction" in history[0]
        assert not any(p.requires_grad for p in d.disc.features.model.parameters())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3]


@pytest.mark.parametrize("variant, module", [("dmd-ot", dmd_methods), ("ppf", ppf_methods)])
def test_teacher_finetunes_draw_noise_levels_at_their_shift(tmp_path, model_path, monkeypatch, variant, module):
    # the finetuned teacher is queried at DMD's shifted score levels; teacher_finetune_shift trains it there
    drawn = []

    def record(batch, **kw):
        sigma = score_sigmas(batch, **kw)
        drawn.append((kw["shift"], kw.get("window", (0.0, 1.0)), sigma))
        return sigma

    monkeypatch.setattr(module, "score_sigmas", record)
    run = Runner(tiny_cfg(tmp_path, model_path, distill={"variant": variant, "teacher_finetune_shift": 3.0}))
    assert len(run.method.teacher_losses) == 2
    assert len(drawn) == 2 * 3  # every step, every stage
    assert all(shift == 3.0 and lo <= s.min() and s.max() <= hi for shift, (lo, hi), s in drawn)


def test_full_finetune_student_and_bit_exact_resume(tmp_path, model_path):
    kw = dict(distill={"variant": "dmd-pt", "lora_rank": 0}, train={"steps": 4})
    straight = Runner(tiny_cfg(tmp_path / "a", model_path, **kw))
    straight.fit()
    first = Runner(tiny_cfg(tmp_path / "b", model_path, distill=kw["distill"], train={"steps": 2}))
    first.fit()
    resumed = Runner(tiny_cfg(tmp_path / "b", model_path, **kw))
    resumed.fit(resume=True)
    assert resumed.step == 4
    a_student, b_student = straight.method.student.state_dict(), resumed.method.student.state_dict()
    for (k, a), b in zip(a_student.items(), b_student.values(), strict=True):
        assert torch.equal(a, b), k
    a_critic, b_critic = straight.method.critic_model.parameters(), resumed.method.critic_model.parameters()
    for a, b in zip(a_critic, b_critic, strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step_0000004"


def test_schedule_must_fit_the_checkpoint_stage_count(tmp_path, model_path):
    import shutil

    path = tmp_path / "two_stage"
    shutil.copytree(model_path, path)
    ModelCard(kind="pyramidal", num_stages=2, boundaries=(0.5,)).save(path)
    with pytest.raises(ValueError, match="2-stage checkpoint"):
        Runner(tiny_cfg(tmp_path / "run", path))


@pytest.mark.parametrize("variant", ["dmd-pt*", "adv-od", "ppf"])
def test_distilled_export_samples_through_pyrflow_sample(tmp_path, variant, capsys):
    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.pipeline import load_components
    from pyrflow_fast.sample import generate, load_ppf
    from pyrflow_fast.sample import main as sample_main

    source = write_tiny_wan_dir(tmp_path / "wan", layout="diffusers")
    out = tmp_path / "run"
    args = [
        "--variant",
        variant,
        "--set",
        f'model.path="{source}"',
        "--set",
        'model.config=""',
        "--set",
        "data.kind=synthetic",
        "--set",
        "data.synthetic_samples=2",
        "--set",
        "data.synthetic_size=[5, 8, 8]",
        "--set",
        f'train.output_dir="{out}"',
        "--set",
        "train.steps=2",
        "--set",
        "train.progress=false",
        "--set",
        "distill.lora_rank=2",
        "--set",
        'distill.regression_schedule="1-1-1"',
        "--set",
        "distill.disc_hidden=8",
        "--set",
        "distill.teacher_finetune_steps=1",
    ]
    assert distill_main(args) == 0
    export = out / "export"
    card = ModelCard.load(export)
    assert card.kind == "distilled" and card.schedule == "2-2-1"
    assert card.shift == 5.0  # distill.sample_shift: the grid the student learned its steps on
    import diffusers  # diffusers' own loader reads the export (a diffusers-layout source)

    assert isinstance(diffusers.WanPipeline.from_pretrained(export).transformer, diffusers.WanTransformer3DModel)
    components = load_components(export)
    ppf = None
    if variant == "ppf":
        assert card.ppf_patches == ((1, 2, 2), (1, 4, 4), (1, 8, 8))
        with pytest.raises(ValueError, match="PPF checkpoint"):
            generate(components, "a red car", card=card, frames=17, height=64, width=64, progress=False)
        ppf = load_ppf(export, components.transformer, card)
    res = generate(components, "a red car", card=card, frames=17, height=64, width=64, progress=False, ppf=ppf)
    assert res.sampler == "few-step" and res.schedule == "2-2-1" and res.info["guidance_scale"] == 1.0
    assert torch.isfinite(res.video).all()
    capsys.readouterr()
    assert sample_main(sample_args(export, "a dog", tmp_path / "v.gif")) == 0
    assert "few-step 2-2-1" in capsys.readouterr().err


# ------------------------------------------------------------------------------- evidence
@pytest.mark.slow
def test_evidence_distilled_student_matches_the_teacher_better_than_the_undistilled_model(tmp_path):
    from pyrflow_fast.distill.evidence import run

    res = run(300, 200, num=32, out_dir=tmp_path, log=lambda *a: None)
    assert res["fd_student_few_step_2-2-1"] < res["fd_teacher_euler_2-2-1"]
    assert res["fd_student_few_step_2-2-1"] < res["fd_teacher_few_step_2-2-1"]


def test_model_card_ppf_patches_round_trip(tmp_path):
    card = ModelCard(kind="distilled", ppf_patches=([1, 2, 2], [1, 4, 4], [1, 8, 8]))
    card.save(tmp_path)
    assert ModelCard.load(tmp_path) == card and card.ppf_patches[2] == (1, 8, 8)
    assert ModelCard.load(tmp_path.parent).ppf_patches == ()  # no card: a base checkpoint, no PPF
    with pytest.raises(ValueError, match="PPF patches"):
        ModelCard(ppf_patches=((1, 2, 2),))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dmd-pt*", "ppf"])
def test_ddp_two_processes_on_gloo(tmp_path, model_path, variant):
    cfg = tiny_cfg(
        tmp_path / "run",
        model_path,
        distill={"variant": variant},
        train={"parallel": "ddp", "device": "cpu", "steps": 2},
        checkpoint={"every": 1, "export": True},
    )
    torchrun("pyrflow_fast.distill", cfg, tmp_path)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2]
    assert ModelCard.load(tmp_path / "run" / "export").kind == "distilled"
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000002"


def test_parallel_none_refuses_a_multi_process_launch(tmp_path, model_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE = 2"):
        Runner(tiny_cfg(tmp_path, model_path))


# ------------------------------------------------------------------- FSDP / per-sample draws
MATCH_RTOL = (
    1e-4  # 1 process (batch 2) vs 2 processes (batch 1 each): same draws, other reduction order (measured: <= 1e-6)
)


def _losses(out):
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return (
        [m["critic_loss"] for m in lines],
        [m["generator_loss"] for m in lines if "generator_loss" in m],
        [m["k"] for m in lines],
    )


def test_draws_depend_on_the_global_slot_only(tmp_path, model_path):
    d = Runner(tiny_cfg(tmp_path, model_path, distill={"variant": "dmd-pt*"}, train={"batch_size": 2})).method
    drs = d.draws(3)
    d1 = Runner(tiny_cfg(tmp_path / "one", model_path, distill={"variant": "dmd-pt*"}, train={"batch_size": 1})).method
    d1.dist.rank = 1  # rank 1 of a 2-process run with batch 1 draws global slot 1
    assert [dr["slot"] for dr in drs] == [0, 1] and d1.draws(3)[0]["slot"] == 1
    assert torch.equal(d1.draws(3)[0]["eps0"], drs[1]["eps0"]) and d1.draws(3)[0]["k"] == drs[0]["k"] == drs[1]["k"]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_and_export_samples(tmp_path, model_path, parallel):
    from pipeline_fixtures import write_tiny_wan_dir

    from pyrflow_fast.pipeline import load_components
    from pyrflow_fast.sample import generate

    source = write_tiny_wan_dir(tmp_path / "wan", layout="diffusers")  # with text encoder and VAE: the export samples
    kw = dict(
        model={"config": ""}, distill={"variant": "dmd-pt*", "critic_ratio": 1}, checkpoint={"every": 2, "export": True}
    )
    single = tiny_cfg(tmp_path / "one", source, train={"steps": 2, "batch_size": 2}, **kw)
    Runner(single).fit()
    two = tiny_cfg(
        tmp_path / "two", source, train={"steps": 2, "batch_size": 1, "parallel": parallel, "device": "cpu"}, **kw
    )
    torchrun("pyrflow_fast.distill", two, tmp_path)
    (c1, g1, k1), (c2, g2, k2) = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert k1 == k2 and len(g1) == len(g2) == 2
    np.testing.assert_allclose(c2, c1, rtol=MATCH_RTOL)
    np.testing.assert_allclose(g2, g1, rtol=MATCH_RTOL)
    export = tmp_path / "two" / "export"
    card = ModelCard.load(export)
    assert (
        card.kind == "distilled" and (tmp_path / "two" / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    )
    assert any(
        m["grad_norm"] > 0 for m in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
    )
    if parallel == "fsdp":
        res = generate(load_components(export), "a red car", card=card, frames=17, height=64, width=64, progress=False)
        assert res.sampler == "few-step" and torch.isfinite(res.video).all()


def test_fsdp_resume_matches_a_straight_run(tmp_path, model_path):
    kw = dict(distill={"variant": "dmd-pt*", "critic_ratio": 2}, checkpoint={"every": 1, "export": False})
    straight = tiny_cfg(
        tmp_path / "straight",
        model_path,
        train={"steps": 3, "batch_size": 1, "parallel": "fsdp", "device": "cpu"},
        **kw,
    )
    torchrun("pyrflow_fast.distill", straight, tmp_path)
    part = tiny_cfg(
        tmp_path / "resumed", model_path, train={"steps": 2, "batch_size": 1, "parallel": "fsdp", "device": "cpu"}, **kw
    )
    torchrun("pyrflow_fast.distill", part, tmp_path)
    full = tiny_cfg(
        tmp_path / "resumed", model_path, train={"steps": 3, "batch_size": 1, "parallel": "fsdp", "device": "cpu"}, **kw
    )
    torchrun("pyrflow_fast.distill", full, tmp_path, "--resume")
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")


def test_adversarial_target_continues_the_state_the_student_denoised(tmp_path, model_path):
    """adv-*: the reconstruction target is the teacher's continuation of the roll-out's state, its fresh
    in-stage noise included (a target from the initial noise alone ignores that noise and pulls the student
    to a blurred mean): at evaluation 0 the two coincide; at evaluation 1 another draw of the roll-out's
    noise gives another target, and the generator's reconstruction term is measured against it."""
    from pyrflow_fast.distill.adversarial import reconstruction_loss

    cfg = tiny_cfg(tmp_path, model_path, distill={"variant": "adv-pd", "regression_schedule": "2-2-2"})
    d = Runner(cfg).method
    base = d.draws(0)[0]
    preds, targets = [], []
    for k, seed in ((0, 1), (1, 1), (1, 2)):
        dr = {**base, "k": k, "rng": torch.Generator().manual_seed(seed)}
        preds.append(d.rollout(dr, grad=False))
        targets.append(d.teacher_target(dr, 0, preds[-1].stage, start=preds[-1]))
    assert [p.stage for p in preds] == [2, 2, 2]
    torch.testing.assert_close(targets[0], d.teacher_target(base, 0, 2), rtol=0, atol=0)
    assert not torch.allclose(preds[1].x, preds[2].x) and not torch.allclose(targets[1], targets[2], atol=1e-4)
    _, parts = d.generator_loss(dr, 0, preds[2])
    torch.testing.assert_close(parts["reconstruction"], reconstruction_loss(preds[2].x0, targets[2]))


@pytest.mark.parametrize("variant", ["adv-od", "adv-pd"])
def test_adversarial_with_dmd_trains_a_fake_score_beside_the_head(tmp_path, model_path, variant):
    """adv-* with distill.dmd_weight (DMD2: the GAN term added to DMD): the critic role trains the head and a fake
    score, whose flow-matching loss adds to the hinge; the generator loss is adv_weight * adversarial plus
    dmd_weight * DMD-PT*'s (its regression included), the reconstruction term left out at rec_weight = 0."""
    from pyrflow_fast.distill import adversarial

    distill = {"variant": variant, "dmd_weight": 0.5, "rec_weight": 0.0, "adv_weight": 3.0, "lora_rank": 0}
    run = Runner(tiny_cfg(tmp_path, model_path, distill=distill))
    d = run.method
    assert d.dmd is not None and d.dmd.real is d.pyr_teacher
    critic = d.roles["critic"].module
    head, fake = ({k: v.clone() for k, v in m.state_dict().items()} for m in (critic["head"], critic["fake"]))
    teacher = {k: v.clone() for k, v in d.teacher_model.state_dict().items()}
    dr = d.draws(0)[0]
    pred = d.rollout(dr, grad=True)
    rng_state = dr["rng"].get_state()
    total, parts = d.generator_loss(dr, 0, pred)
    assert set(parts) == {"adversarial", "dmd", "regression"}
    dmd_total = parts["dmd"] + d.config.distill.regression_weight * parts["regression"]
    torch.testing.assert_close(total, 3.0 * parts["adversarial"] + 0.5 * dmd_total)
    # the critic loss is the hinge plus DMD's critic loss, each on its own draws of dr's generator
    dr["rng"].set_state(rng_state)
    x0 = pred.x0.detach()
    loss = d.critic_loss(dr, x0, pred.stage, pred.process)
    dr["rng"].set_state(rng_state)
    with torch.no_grad():
        xr, tr = d._disc_inputs(torch.stack([torch.as_tensor(dr["items"][0]["x0s"][pred.stage])]), pred.process, dr)
        xf, tf = d._disc_inputs(x0, pred.process, dr)
    hinge = adversarial.hinge_loss(d.disc(xr, tr, dr["ctx"]), d.disc(xf, tf, dr["ctx"]))
    torch.testing.assert_close(loss, hinge + d.dmd.critic_loss(x0, pred.process, dr["ctx"], rng=dr["rng"]))
    history = run.fit()
    assert "dmd" in history[0] and "reconstruction" not in history[0]
    for before, module in ((head, critic["head"]), (fake, critic["fake"])):
        assert any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, d.teacher_model.state_dict()[k]) for k, v in teacher.items())  # the real score frozen
