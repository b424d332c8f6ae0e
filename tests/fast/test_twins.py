"""The torch twins against the NumPy reference: identical results on identical inputs and noise.

float64 agrees to 1e-12 (absolute, unit-scale data), float32 to 1e-6 relative to the reference in
float64 on the same data. Random paths are compared by feeding both implementations the same
NumPy noise through a callable ``rng``.
"""

import re

import numpy as np
import pytest
import torch

import pyrflow_fast.natural as fn
import pyrflow_fast.process as fp
import pyrflow_fast.resample as fr
import pyrflow_fast.samplers as fs
import pyrflow_ref.natural as rn
import pyrflow_ref.process as rp
import pyrflow_ref.resample as rr
import pyrflow_ref.samplers as rs
from pyrflow_fast import kernels
from pyrflow_ref.windows import WAN_DEFAULT_BOUNDARIES, StageWindows

FAMILIES = ["haar", "dct", "orthogonal", "avgpool"]
FACTORS = [(2, 2, 2), (1, 2, 2)]
WINDOWS = StageWindows(WAN_DEFAULT_BOUNDARIES)


def close(fast, ref, dtype):
    """float64: max abs error <= 1e-12; float32: <= 1e-6 relative to the reference's max."""
    fast = fast.double().numpy() if torch.is_tensor(fast) else np.asarray(fast, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert fast.shape == ref.shape
    err = np.abs(fast - ref).max() if ref.size else 0.0
    bound = 1e-12 if dtype == torch.float64 else 1e-6 * max(np.abs(ref).max(), 1.0)
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


def pair(family, factors, first_frame, frames, height=4, width=6, seed=0):
    """The same transition in both implementations (random orthogonal matrices for 'orthogonal')."""
    matrices = None
    if family == "orthogonal":
        rng = np.random.default_rng(seed)
        sizes = (frames - 1 if first_frame else frames, height, width)
        matrices = tuple(
            np.linalg.qr(rng.standard_normal((n, n)))[0] if f > 1 else None for n, f in zip(sizes, factors)
        )
    return rr.Resampler(family, factors, first_frame, matrices), fr.Resampler(family, factors, first_frame, matrices)


def frames_for(factors, first_frame, k=2):
    return 1 + factors[0] * k if first_frame else factors[0] * k


def to_torch(a, dtype):
    return torch.from_numpy(np.asarray(a)).to(dtype)


def data(shape, dtype, seed=0):
    """Unit-scale data: NumPy float64 (rounded to ``dtype``) and the torch tensor."""
    t = to_torch(np.random.default_rng(seed).standard_normal(shape), dtype)
    return t.double().numpy(), t


def numpy_noise(seed):
    """Identical noise for both implementations: a NumPy Generator, and a callable rng over an equal one."""
    twin = np.random.default_rng(seed)
    return np.random.default_rng(seed), lambda shape: torch.from_numpy(twin.standard_normal(shape))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("first_frame", [True, False])
@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_resampler_ops(family, factors, first_frame, dtype):
    f = frames_for(factors, first_frame)
    ref, fast = pair(family, factors, first_frame, f)
    shape = (2, 3, f, 4, 6)
    x_np, x = data(shape, dtype)
    coarse = ref.coarse_shape(shape)
    assert fast.coarse_shape(shape) == coarse and fast.fine_shape(coarse) == shape
    np.testing.assert_array_equal(fast.gain(coarse[-3]), ref.gain(coarse[-3]))
    y_np, y = data(coarse, dtype, seed=1)
    w_np, w = data(shape, dtype, seed=2)
    close(fast.down(x), ref.down(x_np), dtype)
    close(fast.up(y), ref.up(y_np), dtype)
    close(fast.up(y, shape), ref.up(y_np, shape), dtype)
    close(fast.project(x), ref.project(x_np), dtype)
    close(fast.high(x), ref.high(x_np), dtype)
    assert fast.down(x).dtype == dtype
    if family == "avgpool":
        for impl, (yy, ww) in ((ref, (y_np, w_np)), (fast, (y, w))):
            with pytest.raises(ValueError, match="orthonormal family"):
                impl.up_noisy(yy, 0.5, ww)
        return
    for s in (0.4, [0.3, 0.8]):
        close(fast.up_noisy(y, torch.tensor(s, dtype=torch.float64), w), ref.up_noisy(y_np, s, w_np), dtype)


def test_resampler_is_fused_exactly_for_haar_kernel_factors():
    assert fr.Resampler("haar", (2, 2, 2)).fused and fr.Resampler("haar", (1, 2, 2), False).fused
    assert not fr.Resampler("haar", (2, 1, 1)).fused and not fr.Resampler("dct", (2, 2, 2)).fused


def zeros(module, shape):
    return torch.zeros(shape, dtype=torch.float64) if module is fr else np.zeros(shape)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.Resampler("wavelet", (2, 2, 2)),
        lambda m: m.Resampler("haar", (2, 2)),
        lambda m: m.Resampler("haar", (2, 2, 2), True, (None, None, None)),
        lambda m: m.Resampler("orthogonal", (2, 2, 2), True, (None, None, None)),
        lambda m: m.Resampler("orthogonal", (1, 2, 1), True, (None, np.ones((2, 2)), None)),
        lambda m: m.Resampler("haar", (2, 2, 2)).coarse_shape((1, 1, 4, 4, 4)),
        lambda m: m.Resampler("haar", (2, 2, 2), False).coarse_shape((1, 1, 4, 3, 4)),
        lambda m: m.Resampler("haar", (2, 2, 2)).coarse_shape((4, 4)),
        lambda m: m.Resampler("haar").up(zeros(m, (1, 1, 3, 2, 2)), (1, 1, 5, 4, 6)),
        lambda m: m.Pyramid.uniform("haar", (2, 2, 2), 0),
        lambda m: m.Pyramid.uniform("haar", (2, 2, 2), 3).shapes((1, 1, 5, 4, 6)),
    ],
)
def test_validation_errors_match_the_reference(call):
    with pytest.raises(ValueError) as expected:
        call(rr)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        call(fr)


def test_pyramid():
    for family, factors in (("haar", (2, 2, 2)), ("dct", (1, 2, 2))):
        ref, fast = rr.Pyramid.uniform(family, factors, 3), fr.Pyramid.uniform(family, factors, 3)
        assert all(isinstance(transition, fr.Resampler) for transition in fast.transitions) and fast.num_stages == 3
        shape = (1, 16, 21, 56, 104) if factors[0] == 2 else (1, 16, 3, 56, 104)
        assert fast.shapes(shape) == ref.shapes(shape)
        for a, b in zip(fast.gains(shape), ref.gains(shape), strict=True):
            np.testing.assert_array_equal(a, b)
    fields = [
        [(tr.family, tr.factors, tr.first_frame) for tr in p.transitions] for p in (fr.WAN_PYRAMID, rr.WAN_PYRAMID)
    ]
    assert fields[0] == fields[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_natural(dtype):
    sigma_np, g_np = np.array([0.0, 0.3, 0.9, 1.0]), np.array([2.0, 2 * np.sqrt(2), 2 * np.sqrt(2)])
    s, g = fn.per_frame(to_torch(sigma_np, dtype), to_torch(g_np, dtype))
    s_np, gg_np = rn.per_frame(sigma_np, g_np)
    assert s.shape == s_np.shape and g.shape == gg_np.shape and s.dtype == dtype
    x_np, x = data((4, 2, 3, 2, 2), dtype)
    v_np, v = data((4, 2, 3, 2, 2), dtype, seed=1)
    close(fn.varsigma(s, g), rn.varsigma(s_np, gg_np), dtype)
    close(fn.sigma_from_varsigma(fn.varsigma(s, g), g), np.broadcast_to(s_np, (4, 1, 3, 1, 1)), dtype)
    close(fn.scale_c(s, g), rn.scale_c(s_np, gg_np), dtype)
    close(fn.bridge_velocity(x, s, g, v), rn.bridge_velocity(x_np, s_np, gg_np, v_np), dtype)
    close(fn.natural_velocity(x, s, g, fn.bridge_velocity(x, s, g, v)), v_np, dtype)
    assert fn.per_frame(0.5, [1.0, 2.0])[0].dtype == torch.float64  # host values: float64, as the reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_process(family, dtype):
    ref, fast, f = sampler_pair(family, (2, 2, 2), True)
    shape = (2, 3, f, 8, 8)
    x0_np, x0 = data(shape, dtype)
    r0s, f0s = rp.clean_pyramid_latent(x0_np, ref), fp.clean_pyramid_latent(x0, fast)
    for a, b in zip(f0s, r0s, strict=True):
        close(a, b, dtype)
    for stage in range(3):
        eps_np, eps = data(r0s[stage].shape, dtype, seed=stage + 1)
        sc, sn = WINDOWS.sigma_c(stage), WINDOWS.sigma_n(stage)
        sigma = np.array([sc, 0.3 * sc + 0.7 * sn])
        close(fp.coarse_signal_up(f0s, stage, fast), rp.coarse_signal_up(r0s, stage, ref), dtype)
        for got, want in zip(
            fp.forward_sample(f0s, eps, torch.from_numpy(sigma), stage, WINDOWS, fast),
            rp.forward_sample(r0s, eps_np, sigma, stage, WINDOWS, ref),
            strict=True,
        ):
            close(got, want, dtype)
        close(fp.rho(sigma[1], sc, sn), rp.rho(sigma[1], sc, sn), torch.float64)
        if family == "avgpool":
            continue
        x, v = fp.forward_sample(f0s, eps, float(sigma[1]), stage, WINDOWS, fast)
        project = fast.transitions[stage].project if 0 < stage < 2 else None
        close(fp.x0_from_velocity(x, v, float(sigma[1]), sc, sn, project), f0s[stage], dtype)
    with pytest.raises(ValueError, match="outside stage 1's window"):
        fp.forward_sample(f0s, eps, 0.1, 1, WINDOWS, fast)
    with pytest.raises(ValueError, match="needs the projection P"):
        fp.x0_from_velocity(f0s[1], f0s[1], 0.7, WINDOWS.sigma_c(1), WINDOWS.sigma_n(1), None)


def test_clean_pyramid_pixel():
    mix = np.random.default_rng(5).standard_normal((4, 3))
    latent = rr.Pyramid.uniform("haar", (2, 2, 2), 3), fr.Pyramid.uniform("haar", (2, 2, 2), 3)
    pixel = rr.Pyramid.uniform("avgpool", (2, 2, 2), 3), fr.Pyramid.uniform("avgpool", (2, 2, 2), 3)
    video_np, video = data((1, 3, 5, 8, 8), torch.float64)
    want = rp.clean_pyramid_pixel(video_np, latent[0], lambda v: np.einsum("dc,bc...->bd...", mix, v), pixel[0])
    got = fp.clean_pyramid_pixel(
        video, latent[1], lambda v: torch.einsum("dc,bc...->bd...", torch.from_numpy(mix), v), pixel[1]
    )
    for a, b in zip(got, want, strict=True):
        close(a, b, torch.float64)
    with pytest.raises(ValueError, match="pixel pyramid has 2 stages"):
        fp.clean_pyramid_pixel(video, latent[1], lambda v: v, fr.Pyramid.uniform("avgpool", (2, 2, 2), 2))


def ref_model(x_nat, t, cond):
    scale = 1.0 if cond is None else float(cond)
    return scale * np.tanh(x_nat) * (t[:, None, :, None, None] / 1000.0) - 0.1 * x_nat


def fast_model(x_nat, t, cond):
    assert t.shape == (x_nat.shape[0], x_nat.shape[2])  # per-frame timesteps (B, F)
    scale = 1.0 if cond is None else float(cond)
    return scale * torch.tanh(x_nat) * (t[:, None, :, None, None] / 1000.0) - 0.1 * x_nat


def test_timesteps_and_model_velocity():
    g = rr.WAN_PYRAMID.gain(1, 3)
    t = fs.timesteps(torch.tensor([0.3, 0.6], dtype=torch.float64), torch.from_numpy(g), 2)
    assert t.shape == (2, 3)
    close(t, rs.timesteps(np.array([0.3, 0.6]), g, 2), torch.float64)
    x_np, x = data((2, 2, 3, 2, 2), torch.float64)
    close(fs.model_velocity(fast_model, x, 0.7, g, 2.0), rs.model_velocity(ref_model, x_np, 0.7, g, 2.0), torch.float64)
    guided = fs.guided(fast_model, 4.0)
    close(guided(x, t, 2.0), rs.guided(ref_model, 4.0)(x_np, t.numpy(), 2.0), torch.float64)


SAMPLER_CASES = [
    ("haar", (2, 2, 2), True, "2-2-2"),
    ("haar", (1, 2, 2), True, "1-2-2"),
    ("haar", (2, 2, 2), False, "0-2-3"),
    ("dct", (2, 2, 2), True, "2-1-2"),
    ("orthogonal", (1, 2, 2), False, "1-1-2"),
]


def sampler_pair(family, factors, first_frame):
    f = frames_for(factors, first_frame, k=4)
    if family != "orthogonal":
        return (
            rr.Pyramid.uniform(family, factors, 3, first_frame),
            fr.Pyramid.uniform(family, factors, 3, first_frame),
            f,
        )
    shape, transitions = (f, 8, 8), ([], [])
    for seed in range(2):
        r, q = pair(family, factors, first_frame, *shape, seed=seed)
        transitions[0].append(r)
        transitions[1].append(q)
        shape = r.coarse_shape(shape)
    return rr.Pyramid(tuple(transitions[0])), fr.Pyramid(tuple(transitions[1])), f


def start_noise(ref_pyramid, f, schedule, dtype):
    stages = ref_pyramid.shapes((2, 2, f, 8, 8))
    top = len(schedule.split("-")) - 1 - next(k for k, n in enumerate(schedule.split("-")) if n != "0")
    return data(stages[top], dtype, seed=7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("family", "factors", "first_frame", "schedule"), SAMPLER_CASES)
def test_sample_euler(family, factors, first_frame, schedule, dtype):
    ref, fast, f = sampler_pair(family, factors, first_frame)
    noise_np, noise = start_noise(ref, f, schedule, dtype)
    calls = ([], [])
    gen, draw = numpy_noise(3)
    want = rs.sample_euler(
        rs.guided(ref_model, 3.0), noise_np, ref, WINDOWS, schedule, cond=2.0, shift=3.0, rng=gen,
        callback=lambda *a: calls[0].append(a[:3]),
    )  # fmt: skip
    got = fs.sample_euler(
        fs.guided(fast_model, 3.0), noise, fast, WINDOWS, schedule, cond=2.0, shift=3.0, rng=draw,
        callback=lambda *a: calls[1].append(a[:3]),
    )  # fmt: skip
    assert got.dtype == dtype and calls[0] == calls[1]
    close(got, want, dtype)


def test_sample_euler_resumed():
    ref, fast, f = sampler_pair("haar", (2, 2, 2), True)
    noise_np, noise = data(ref.shapes((2, 2, f, 8, 8))[1], torch.float64, seed=8)
    start = (1, (WINDOWS.sigma_c(1) + WINDOWS.sigma_n(1)) / 2)
    gen, draw = numpy_noise(6)
    want = rs.sample_euler(ref_model, noise_np, ref, WINDOWS, "3-3-2", cond=2.0, shift=3.0, rng=gen, start=start)
    got = fs.sample_euler(fast_model, noise, fast, WINDOWS, "3-3-2", cond=2.0, shift=3.0, rng=draw, start=start)
    close(got, want, torch.float64)


@pytest.mark.parametrize(("family", "factors", "first_frame", "schedule"), SAMPLER_CASES)
def test_sample_few_step(family, factors, first_frame, schedule):
    ref, fast, f = sampler_pair(family, factors, first_frame)
    noise_np, noise = start_noise(ref, f, schedule, torch.float64)
    gen, draw = numpy_noise(4)
    want = rs.sample_few_step(ref_model, noise_np, ref, WINDOWS, schedule, cond=0.5, shift=2.0, rng=gen)
    close(
        fs.sample_few_step(fast_model, noise, fast, WINDOWS, schedule, cond=0.5, shift=2.0, rng=draw),
        want,
        torch.float64,
    )


def test_sample_plain():
    noise_np, noise = data((2, 3, 5, 4, 4), torch.float64)
    want = rs.sample_plain(rs.guided(ref_model, 2.0), noise_np, 6, cond=1.5, shift=5.0)
    close(fs.sample_plain(fs.guided(fast_model, 2.0), noise, 6, cond=1.5, shift=5.0), want, torch.float64)
    close(fs.sample_plain(fast_model, noise, 4), rs.sample_plain(ref_model, noise_np, 4), torch.float64)


def test_triton_path_matches_torch_path(monkeypatch):
    """The samplers and Haar resamplers on the kernels (interpreted here) agree with the torch twins."""
    pyramid = fr.Pyramid.uniform("haar", (2, 2, 2), 3)
    noise = torch.randn(1, 2, 2, 2, 4, generator=torch.Generator().manual_seed(0))

    def run():
        draw = numpy_noise(8)[1]
        return fs.sample_euler(fs.guided(fast_model, 3.0), noise, pyramid, WINDOWS, "1-1-1", cond=2.0, rng=draw)

    monkeypatch.setenv("PYRFLOW_TRITON", "0")
    want = run()
    monkeypatch.setenv("PYRFLOW_TRITON", "1")
    assert kernels.use_triton(noise)
    got = run()
    close(got, want.double().numpy(), torch.float32)
    # a Generator on the Triton path: in-kernel transition noise, reproducible per seed
    runs = [
        fs.sample_euler(fast_model, noise, pyramid, WINDOWS, "1-1-1", rng=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_samplers_keep_the_noise_dtype():
    pyramid, noise = fr.Pyramid.uniform("haar", (2, 2, 2), 3), torch.randn(1, 2, 2, 2, 2).bfloat16()
    for sampler, schedule in ((fs.sample_euler, "1-1-1"), (fs.sample_few_step, "2-2-1")):
        out = sampler(fast_model, noise, pyramid, WINDOWS, schedule, rng=torch.Generator().manual_seed(0))
        assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 5, 8, 8)


# ------------------------------------------------------------------------------ StageProcess
def test_stage_process_has_the_reference_api():
    public = [{n for n in dir(c) if not n.startswith("_")} for c in (rp.StageProcess, fp.StageProcess)]
    assert public[0] == public[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("family", ["haar", "dct", "orthogonal"])
def test_stage_process(family, stage, dtype):
    ref, fast, f = sampler_pair(family, (2, 2, 2), True)
    shape = ref.shapes((2, 2, f, 8, 8))[stage]
    procs = (
        rp.StageProcess.pyramidal(ref, WINDOWS, stage, shape[-3]),
        fp.StageProcess.pyramidal(fast, WINDOWS, stage, shape[-3]),
    )
    (x0_np, x0), (eps_np, eps), (v_np, v) = (data(shape, dtype, seed=k) for k in range(3))
    rho = np.array([0.2, 0.9])
    sig = [p.sigma(r) for p, r in zip(procs, (rho, torch.from_numpy(rho)), strict=True)]
    close(sig[1], sig[0], torch.float64)
    r, q = procs
    close(q.rho(sig[1]), r.rho(sig[0]), torch.float64)
    close(q.sample(x0, eps, sig[1]), r.sample(x0_np, eps_np, sig[0]), dtype)
    close(q.target(x0, eps), r.target(x0_np, eps_np), dtype)
    for a, b in zip(q.forward(x0, eps, sig[1], coarse=v), r.forward(x0_np, eps_np, sig[0], coarse=v_np), strict=True):
        close(a, b, dtype)
    close(q.x0_from_velocity(x0, v, sig[1]), r.x0_from_velocity(x0_np, v_np, sig[0]), dtype)
    close(q.eps(x0, v, sig[1]), r.eps(x0_np, v_np, sig[0]), dtype)
    close(q.apply_m(x0, sig[1]), r.apply_m(x0_np, sig[0]), dtype)
    for norm in ("none", "low"):
        close(q.apply_mtm(x0, sig[1], norm), r.apply_mtm(x0_np, sig[0], norm), dtype)
    for a, b in zip(q.band_weights(sig[1]), r.band_weights(sig[0]), strict=True):
        close(a, b, torch.float64)
    close(q.frame_gain(shape[-3]), r.frame_gain(shape[-3]), torch.float64)
    for a, b in zip(q.natural_input(x0, sig[1]), r.natural_input(x0_np, sig[0]), strict=True):
        close(a, b, dtype)
    if dtype == torch.float64:  # float32: the bridge cancels (1 - g) x / c against g v_hat / c (g up to 8)
        close(q.velocity(fast_model, x0, sig[1], 2.0), r.velocity(ref_model, x0_np, sig[0], 2.0), dtype)
        close(q.denoise(fast_model, x0, sig[1], 2.0), r.denoise(ref_model, x0_np, sig[0], 2.0), dtype)


def test_stage_process_errors():
    for cls in (rp.StageProcess, fp.StageProcess):
        with pytest.raises(ValueError, match=re.escape("a window [0.3, 0.7] with sigma_n < 1 needs the projection P")):
            cls(0.3, 0.7)
        with pytest.raises(ValueError, match=re.escape("need 0 <= sigma_c < sigma_n <= 1, got [0.5, 0.5]")):
            cls(0.5, 0.5)
        with pytest.raises(ValueError, match="band_norm must be 'low' or 'none', got 'both'"):
            ones = torch.ones(1, 1, 1, 1, 1) if cls is fp.StageProcess else np.ones((1,) * 5)
            cls.plain().apply_mtm(ones, 0.5, "both")


@pytest.mark.parametrize("stop", range(5))
def test_sample_few_step_stop(stop):
    ref, fast, f = sampler_pair("dct", (2, 2, 2), True)
    noise_np, noise = start_noise(ref, f, "2-2-1", torch.float64)
    gen, draw = numpy_noise(5)
    want = rs.sample_few_step(ref_model, noise_np, ref, WINDOWS, "2-2-1", cond=0.5, shift=2.0, rng=gen, stop=stop)
    got = fs.sample_few_step(fast_model, noise, fast, WINDOWS, "2-2-1", cond=0.5, shift=2.0, rng=draw, stop=stop)
    assert got.stage == want.stage
    assert (got.process.sigma_c, got.process.sigma_n) == (want.process.sigma_c, want.process.sigma_n)
    close(got.x0, want.x0, torch.float64)
    close(got.x, want.x, torch.float64)
    assert got.sigma == want.sigma
