"""The analytic FLOPs model: FlopCounterMode agreement, the paper's Table 1, the CLI."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from wan_fixtures import random_wan

from pyrflow_fast.flops import (
    PAPER_PER_FORWARD,
    PAPER_STAGES,
    PAPER_TABLE1,
    forward_flops,
    latent_size,
    main,
    schedule_flops,
)


@pytest.mark.parametrize(
    "name, batch, size, text",
    [("tiny", 2, (3, 6, 8), 5), ("tiny", 1, (1, 2, 2), 8), ("tiny-3layer", 1, (4, 4, 6), 6)],
)
def test_agrees_with_flop_counter_mode(name, batch, size, text):
    model = random_wan(name)
    cfg = model.config
    x = torch.randn(batch, cfg.in_dim, *size)
    ctx = torch.randn(batch, text, cfg.text_dim)
    counter = FlopCounterMode(display=False)
    # On CPU the fused SDPA kernel is invisible to FlopCounterMode; the math backend runs the same
    # attention as two batched matmuls, which it counts.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, torch.full((batch,), 300.0), ctx)
    counted = counter.get_total_flops()
    ours = forward_flops(cfg, size, batch=batch).total
    assert abs(ours - counted) <= 0.01 * counted
    assert ours == counted  # the itemised model counts exactly the same products


def test_stage_latents_and_tokens():
    sizes = [latent_size(p) for p in PAPER_STAGES]
    assert sizes == [(21, 56, 104), (11, 28, 52), (6, 14, 26)]
    assert [forward_flops("wan2.1-t2v-1.3b", s).tokens for s in sizes] == [30576, 4004, 546]
    with pytest.raises(ValueError, match="Wan-VAE"):
        latent_size((80, 448, 832))


def test_per_forward_matches_paper():
    for pixels, paper in zip(PAPER_STAGES, PAPER_PER_FORWARD, strict=True):
        tflops = forward_flops("wan2.1-t2v-1.3b", latent_size(pixels)).total / 1e12
        assert abs(tflops / paper - 1) < 0.005, (pixels, tflops, paper)


def test_table1_all_rows_within_half_percent():
    costs = [forward_flops("wan2.1-t2v-1.3b", latent_size(p)).total / 1e12 for p in PAPER_STAGES]
    assert len(PAPER_TABLE1) == 7
    for schedule, (forwards, paper) in PAPER_TABLE1.items():
        ours = schedule_flops(schedule, costs, forwards_per_step=forwards)
        assert abs(ours / (forwards * paper) - 1) < 0.005, (schedule, ours, forwards * paper)
        assert abs(ours / forwards - paper) < 1.0  # and to 1 TFLOP, as theory §6 states


def test_itemisation_covers_the_model():
    br = forward_flops("wan2.1-t2v-1.3b", (21, 56, 104))
    assert set(br.items) == {
        "patch_embedding",
        "text_embedding",
        "time_embedding",
        "self_attn.qkvo",
        "self_attn.scores",
        "self_attn.values",
        "cross_attn.q_o",
        "cross_attn.text_kv",
        "cross_attn.scores",
        "cross_attn.values",
        "ffn",
        "head",
    }
    assert br.total == sum(br.items.values())
    assert 0 < br.elementwise_total < 0.02 * br.total
    # attention dominates at full resolution, linear layers at the coarsest stage
    assert br.items["self_attn.scores"] > br.items["ffn"]
    coarse = forward_flops("wan2.1-t2v-1.3b", (6, 14, 26))
    assert coarse.items["self_attn.scores"] < coarse.items["ffn"]
    with pytest.raises(ValueError, match="divisible"):
        forward_flops("wan2.1-t2v-1.3b", (6, 13, 26))


def test_schedule_flops():
    assert schedule_flops("2-2-1", [100.0, 10.0, 1.0]) == 122.0
    assert schedule_flops((0, 0, 3), [100.0, 10.0, 1.0], forwards_per_step=2) == 600.0
    with pytest.raises(ValueError):
        schedule_flops("2-2", [100.0, 10.0, 1.0])
    with pytest.raises(ValueError):
        schedule_flops("2-x-1", [100.0, 10.0, 1.0])
    with pytest.raises(ValueError):
        schedule_flops((1, -1, 1), [100.0, 10.0, 1.0])


def test_cli_table(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for row in ("0-0-50", "20-20-10", "0-0-4", "0-0-2", "2-2-2", "2-2-1", "1-1-1"):
        assert row in out
    assert "251.84" in out and "30,576" in out and "not counted above" in out


def test_cli_json_and_custom_schedule(capsys):
    assert main(["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [s["tokens"] for s in rep["stages"]] == [30576, 4004, 546]
    assert len(rep["schedules"]) == 7 and all(abs(r["rel_err"]) < 0.005 for r in rep["schedules"])
    assert main(["--json", "--schedule", "4-4-2", "--guidance"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["schedules"]
    assert row["forwards_per_step"] == 2 and "paper_tflops" not in row
    assert main(["--schedule", "1-1", "--json"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["--stages", "81x448x832,41x224x416", "--schedule", "1-1"]) == 0
    assert "-" in capsys.readouterr().out
