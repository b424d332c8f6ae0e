"""pyrflow-sample checks every argument before it loads a model; defaults as a Wan user runs it; dtypes; offload."""

import inspect
from dataclasses import fields

import av
import pytest
import torch
from pipeline_fixtures import write_tiny_wan_dir
from safetensors.torch import load_file

import pyrflow_fast.sample as sample_mod
from pyrflow_fast.card import ModelCard
from pyrflow_fast.pipeline import load_components
from pyrflow_fast.pipeline.pyramidal import PyramidalWanPipeline
from pyrflow_fast.request import WAN_NEGATIVE_PROMPT, Options
from pyrflow_fast.sample import generate, main
from pyrflow_fast.shapes import model_dir
from pyrflow_fast.shapes.data import SIZE


class Loaded(Exception):
    """Raised by the patched loader: the CLI got as far as loading."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("wan") / "tiny", layout="diffusers")


@pytest.fixture(scope="module")
def components(tiny_dir):
    return load_components(tiny_dir)


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(sample_mod, "load_components", refuse)


def _argv(model, tmp_path, *extra):
    out = [] if "--out" in extra else ["--out", str(tmp_path / "v.mp4")]
    base = ["--model-dir", str(model), "--prompt", "a red car", "--frames", "17", "--height", "64", "--width", "64"]
    return [*base, "--no-progress", *out, *extra]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--height", "100"],
            "height must be a positive multiple of 16 pixels (VAE stride 8 x patch 2), e.g. 96 or 112",
        ),
        (["--width", "0"], "width must be a positive multiple of 16"),
        (["--frames", "18"], "frames must be 4k+1 (the VAE's 4x temporal stride), e.g. 17 or 21; got 18"),
        (["--schedule", "2-2"], "schedule '2-2' has 2 stages, expected 3"),
        (["--schedule", "2-2-1", "--solver", "unipc"], "--solver unipc runs plain schedules only"),
        (["--guidance-scale", "nan"], "the CFG scale must be a finite number, got nan"),
        (["--guidance-scale", "inf"], "the CFG scale must be a finite number"),
        (["--shift", "-1"], "the timestep shift must be a positive finite number"),
        (["--seed", "-3"], "the seed must be in [0, 2**63)"),
        (["--attention", "flash3"] if not torch.cuda.is_available() else ["--attention", "bogus"], "attention"),
        (["--solver", "rk4"], "invalid choice: 'rk4' (choose from 'auto', 'pyramid', 'unipc', 'euler')"),
        (["--dtype", "float64"], "invalid choice: 'float64'"),
        (["--save-latents", "z.pt"], "--save-latents must end in .safetensors"),
        (["--fps", "0"], "--fps must be positive"),
    ],
)
def test_bad_arguments_fail_before_loading(tiny_dir, tmp_path, capsys, no_loading, args, message):
    with pytest.raises(SystemExit) as exc:
        main(_argv(tiny_dir, tmp_path, *args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: pyrflow-sample" in err


def test_output_paths_are_checked_before_loading(tiny_dir, tmp_path, capsys, no_loading):
    (tmp_path / "file").write_text("x")
    (tmp_path / "clip.mp4").mkdir()
    for out, message in (
        (tmp_path / "file" / "sub" / "v.mp4", f"{tmp_path / 'file'} is a file, not a directory"),
        (tmp_path / "clip.mp4", "is a directory; give a file name"),
    ):
        with pytest.raises(SystemExit):
            main(_argv(tiny_dir, tmp_path, "--out", str(out)))
        assert message in capsys.readouterr().err


def test_a_distilled_card_is_checked_before_loading(tiny_dir, tmp_path, capsys, no_loading):
    ModelCard(kind="distilled").save(tiny_dir)
    try:
        with pytest.raises(SystemExit):
            main(_argv(tiny_dir, tmp_path, "--solver", "unipc", "--schedule", "0-0-2"))
        assert "a distilled checkpoint samples with --solver pyramid" in capsys.readouterr().err
    finally:
        (tiny_dir / "pyrflow.json").unlink()


def test_valid_arguments_reach_the_loader_and_an_empty_prompt_warns(tiny_dir, tmp_path, no_loading):
    argv = _argv(tiny_dir, tmp_path, "--height", "80", "--schedule", "2-2-1")  # 80 rows: padded for the pyramid
    with pytest.raises(Loaded):
        main(argv)
    argv[argv.index("--prompt") + 1] = "  "
    with pytest.warns(UserWarning, match="an empty prompt samples the unconditional model"), pytest.raises(Loaded):
        main(argv)


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "usage: pyrflow-sample" in out and "(default: auto)" in out and "(default: outputs/sample.mp4)" in out


def test_shipped_model_samples_at_its_card_size(tmp_path, capsys):
    folder = model_dir("distilled")
    frames, *size = ModelCard.load(folder).size
    assert size == [SIZE, SIZE]
    out = tmp_path / "s.mp4"
    assert main(["--model-dir", str(folder), "--prompt", "a red circle moving left over grass", "--out", str(out)]) == 0
    assert f"({frames}x{SIZE}x{SIZE}, seed " in capsys.readouterr().err
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == frames and decoded[0].shape == (SIZE, SIZE, 3)


def test_random_seed_is_printed_and_repeats_the_run(tiny_dir, tmp_path, capsys):
    argv = _argv(tiny_dir, tmp_path, "--schedule", "0-0-2", "--save-latents", str(tmp_path / "a.safetensors"))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("unipc 0-0-2 (17x64x64, seed ")
    seed = err.split("seed ")[1].split(",")[0]
    argv[argv.index("--save-latents") + 1] = str(tmp_path / "b.safetensors")
    assert main([*argv, "--seed", seed]) == 0
    a, b = (load_file(str(tmp_path / f"{n}.safetensors"))["latents"] for n in "ab")
    assert torch.equal(a, b)
    argv[argv.index("--save-latents") + 1] = str(tmp_path / "c.safetensors")
    assert main([*argv, "--seed", seed, "--t5-cpu"]) == 0  # the text encoder on the CPU: the same video
    assert torch.equal(load_file(str(tmp_path / "c.safetensors"))["latents"], a)


def test_vae_tiling_reaches_the_vae(tiny_dir, tmp_path, monkeypatch):
    loaded = []
    real = sample_mod.load_components
    monkeypatch.setattr(sample_mod, "load_components", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    assert main(_argv(tiny_dir, tmp_path, "--schedule", "0-0-1", "--vae-tiling", "--seed", "0")) == 0
    assert loaded[0].vae.use_tiling


def test_bfloat16_on_cpu_gives_a_finite_video(tiny_dir, tmp_path, capsys):
    argv = _argv(tiny_dir, tmp_path, "--dtype", "bfloat16", "--schedule", "1-1-1", "--seed", "0", "--device", "cpu")
    argv += ["--save-latents", str(tmp_path / "z.safetensors")]
    assert main(argv) == 0
    assert "torch.bfloat16" in capsys.readouterr().err
    z = load_file(str(tmp_path / "z.safetensors"))["latents"]
    assert z.shape == (1, 16, 5, 8, 8) and torch.isfinite(z).all()
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert len(list(container.decode(video=0))) == 17


def test_bfloat16_components_run_under_autocast(tiny_dir):
    comps = load_components(tiny_dir, dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert next(comps.transformer.parameters()).dtype == torch.bfloat16
    assert next(comps.vae.parameters()).dtype == torch.float32
    out = generate(comps, "a dog", schedule="0-0-2", frames=17, height=64, width=64, seed=1, progress=False)
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.video).all()


def test_wan_negative_prompt_is_the_default(components):
    seen = []
    encode = components.encode_prompt
    components.encode_prompt = lambda p: seen.append(list(p)) or encode(p)
    try:
        kw = dict(schedule="0-0-1", frames=17, height=64, width=64, seed=0, progress=False)
        generate(components, "a dog", **kw)
        generate(components, "a dog", negative_prompt="", **kw)
    finally:
        del components.encode_prompt
    assert seen == [["a dog"], [WAN_NEGATIVE_PROMPT], ["a dog"], [""]]


def test_embeddings_and_latents_can_be_given(components):
    kw = dict(schedule="0-0-2", frames=17, height=64, width=64, progress=False)
    ref = generate(components, "a dog", seed=5, **kw)
    noise = torch.randn((1, 16, 5, 8, 8), generator=torch.Generator().manual_seed(5))
    given = generate(
        components,
        prompt_embeds=components.encode_prompt("a dog"),
        negative_prompt_embeds=components.encode_prompt(WAN_NEGATIVE_PROMPT),
        latents=noise,
        **kw,
    )
    assert torch.equal(given.latents, ref.latents)
    with pytest.raises(ValueError, match=r"latents must be the starting noise \(1, 16, 2, 2, 2\)"):
        generate(components, "a dog", latents=noise, **{**kw, "schedule": "2-2-1"})
    with pytest.raises(ValueError, match="give at least one prompt"):
        generate(components, None, **kw)


@pytest.mark.parametrize(
    "module,prog,default",
    [
        ("pyrflow_fast.data.cache", "pyrflow-cache", "(default: 81)"),
        ("pyrflow_fast.flops", "pyrflow-flops", "(default: wan2.1-t2v-1.3b)"),
        ("pyrflow_fast.wan.convert", "pyrflow-wan-convert", "(default: keep)"),
    ],
)
def test_other_commands_show_their_name_and_defaults(module, prog, default, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ") and default in out and "(default: None)" not in out


def test_shapes_cli_rejects_prompts_outside_its_vocabulary(capsys, monkeypatch):
    import pyrflow_fast.shapes.__main__ as shapes_cli

    monkeypatch.setattr(shapes_cli, "load", lambda *a: (_ for _ in ()).throw(Loaded()))
    for text, unknown in (("a purple circle", "purple"), ("a red car at sunset", "car, at, sunset")):
        with pytest.raises(SystemExit):
            shapes_cli.main(["--prompt", text])
        err = capsys.readouterr().err
        assert f"has unknown words: {unknown}" in err and "colours red, green, blue, yellow" in err
    with pytest.raises(Loaded):  # a prompt in the vocabulary goes on to load the model
        shapes_cli.main(["--prompt", "a Blue square moving up over coffee"])


def test_plain_schedules_default_to_wans_unipc_and_its_shift(components):
    kw = dict(schedule="0-0-2", frames=17, height=64, width=64, seed=0, progress=False)
    wan = generate(components, "a dog", **kw)
    assert (wan.solver, wan.info["shift"]) == ("unipc", 3.0)  # diffusers' Wan2.1 scheduler config
    shifted = generate(components, "a dog", shift=5.0, **kw)
    assert shifted.info["shift"] == 5.0 and not torch.equal(shifted.latents, wan.latents)
    euler = generate(components, "a dog", solver="euler", **kw)
    ours = generate(components, "a dog", solver="pyramid", **kw)
    assert (euler.solver, ours.solver, ours.sampler, ours.info["shift"]) == ("euler", "pyramid", "euler", 5.0)
    with pytest.raises(ValueError, match="--solver unipc runs plain schedules only"):
        generate(components, "a dog", **{**kw, "schedule": "1-1-1", "solver": "unipc"})


def test_the_folders_scheduler_config_picks_the_solver(tiny_dir, tmp_path, capsys, no_loading):
    import json

    from pyrflow_fast.pipeline.geometry import read_scheduler_config

    folder = tiny_dir / "scheduler"
    folder.mkdir()
    try:
        (folder / "scheduler_config.json").write_text("{not json")
        with pytest.raises(ValueError, match="scheduler_config.json is not valid JSON"):
            read_scheduler_config(tiny_dir)
        (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
        with pytest.raises(SystemExit):
            main(_argv(tiny_dir, tmp_path, "--schedule", "0-0-2"))
        assert "scheduler 'DDIMScheduler' is not supported" in capsys.readouterr().err
        config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 2.0}
        (folder / "scheduler_config.json").write_text(json.dumps(config))
        comps = load_components(tiny_dir)
        out = generate(comps, "a dog", schedule="0-0-2", frames=17, height=64, width=64, seed=0, progress=False)
        assert (out.solver, out.info["shift"]) == ("euler", 2.0)
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


# --offload: each component on the run device only while it runs, the same result bit for bit
NAMES = ("text_encoder", "transformer", "vae")
OFFLOAD_KW = dict(schedule="2-2-1", sampler="euler", frames=17, height=64, width=64, seed=5, progress=False)


def test_the_request_options_are_generates_and_the_clis_with_the_same_defaults():
    generate_defaults = {n: p.default for n, p in inspect.signature(generate).parameters.items()}
    cli_defaults = vars(sample_mod.build_parser().parse_args(["--model-dir", "m", "--prompt", "p"]))
    for f in fields(Options):
        assert generate_defaults[f.name] == cli_defaults[f.name], f.name


def record(monkeypatch, components) -> tuple[list[tuple], object]:
    """(events, the hook's handle: remove it after the run). Events in order: ``("to", name, device)`` for every
    ``.to()`` of a component, ``("run", name)`` for every forward of one of its submodules."""
    events, owner = [], {}
    for name in NAMES:
        module = getattr(components, name)
        owner.update({id(m): name for m in module.modules()})

        def to(*args, _module=module, _name=name, **kwargs):
            events.append(("to", _name, torch.device(args[0] if args else kwargs["device"])))
            return type(_module).to(_module, *args, **kwargs)

        monkeypatch.setattr(module, "to", to)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, _: events.append(("run", owner[id(m)])) if id(m) in owner else None
    )
    return events, hook


def test_offload_moves_each_component_only_while_it_runs_and_changes_nothing(components, monkeypatch):
    plain = generate(components, "a red car", **OFFLOAD_KW)
    events, hook = record(monkeypatch, components)
    try:
        offloaded = generate(components, "a red car", offload=True, device="cpu", **OFFLOAD_KW)
    finally:
        hook.remove()
    assert torch.equal(plain.latents, offloaded.latents) and torch.equal(plain.video, offloaded.video)
    cpu = torch.device("cpu")
    moves = [e[1:] for e in events if e[0] == "to"]
    assert moves == [(name, cpu) for name in NAMES for _ in range(2)]  # in, out; one component at a time
    placed = None
    for event in events:
        if event[0] == "to":
            placed = event[1] if placed is None else None  # the first move brings it, the second takes it back
        else:
            assert event[1] == placed, f"{event[1]} ran while {placed} was the one on the run device"
    assert {e[1] for e in events if e[0] == "run"} == set(NAMES)  # CFG: prompt and negative prompt, one move
    assert all(p.device == cpu for name in NAMES for p in getattr(components, name).parameters())


def test_given_embeddings_do_not_move_the_text_encoder(components, monkeypatch):
    embeds = components.encode_prompt(["a red car"])
    events, hook = record(monkeypatch, components)
    try:
        generate(
            components, prompt_embeds=embeds, negative_prompt_embeds=embeds, offload=True, device="cpu", **OFFLOAD_KW
        )  # fmt: skip
    finally:
        hook.remove()
    assert [e[1] for e in events if e[0] == "to"] == ["transformer", "transformer", "vae", "vae"]


def test_a_device_other_than_the_weights_needs_offload(components):
    with pytest.raises(ValueError, match="device=meta but the transformer's weights are on cpu.*offload=True"):
        generate(components, "a red car", device="meta", **OFFLOAD_KW)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--t5-cpu"], "--offload and --t5-cpu: pick one"),
        (
            ["--context-parallel", "ulysses"],
            "--offload runs on one process: it does not combine with --context-parallel",
        ),
    ],
)
def test_cli_offload_combinations_fail_before_loading(tiny_dir, tmp_path, capsys, no_loading, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", str(tiny_dir), "--prompt", "a red car", "--out", str(tmp_path / "v.mp4"), "--offload",
              *extra])  # fmt: skip
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_offload_loads_on_the_cpu_and_writes_the_same_latents(tiny_dir, tmp_path, monkeypatch):
    seen = []
    real = sample_mod.load_components

    def load(*args, **kwargs):
        seen.append(kwargs["device"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_mod, "load_components", load)
    base = ["--model-dir", str(tiny_dir), "--prompt", "a red car", "--frames", "17", "--height", "64", "--width", "64",
            "--schedule", "1-1-1", "--seed", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    for name, extra in (("plain", []), ("offload", ["--offload"])):
        out = ["--out", str(tmp_path / f"{name}.mp4"), "--save-latents", str(tmp_path / f"{name}.safetensors")]
        assert main([*base, *out, *extra]) == 0
    a, b = (load_file(str(tmp_path / f"{name}.safetensors"))["latents"] for name in ("plain", "offload"))
    assert torch.equal(a, b) and seen == [torch.device("cpu"), "cpu"]


def test_pipeline_offload_equals_the_plain_call(tiny_dir):
    with pytest.warns(UserWarning, match="no scheduler"):  # the tiny folder has none: Wan's default
        pipe = PyramidalWanPipeline.from_pretrained(tiny_dir)
    kw = dict(num_frames=17, height=64, width=64, schedule="1-1-1", seed=1, progress=False, output_type="latent")
    plain = pipe("a red car", **kw).frames
    assert torch.equal(plain, pipe("a red car", offload=True, device="cpu", **kw).frames)
