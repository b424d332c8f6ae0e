"""The recipe-tuning probes of pyrflow_fast.shapes.probe on a random shapes-architecture transformer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyrflow_fast.shapes.components import write_components
from pyrflow_fast.shapes.data import draw
from pyrflow_fast.shapes.probe import ATTRIBUTES, load_run, main, swapped, text_sensitivity
from pyrflow_fast.wan.checkpoint import save_wan
from pyrflow_fast.wan.config import get_config
from pyrflow_fast.wan.model import WanDiT


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A random shapes WanDiT (output head drawn too, so the text reaches the output) and the frozen components."""
    root = tmp_path_factory.mktemp("probe")
    torch.manual_seed(0)
    model = WanDiT(get_config("shapes"))
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    save_wan(model, root / "export")
    write_components(root / "components")
    return root


def test_swapped_changes_exactly_that_word():
    rng = np.random.default_rng(0)
    for i in range(20):
        video = draw(0, i)
        for attribute, words in ATTRIBUTES.items():
            before, after = video.prompt.split(), swapped(video, attribute, rng).split()
            changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
            assert len(changed) == 1 and changed[0][0] == getattr(video, attribute) and changed[0][1] in words


def test_sensitivity_is_zero_exactly_when_the_text_cannot_reach_the_output(run):
    components = load_run(run / "export", run / "components")
    reads = text_sensitivity(components, clips=4, sigmas=(0.5,), frames=5)["sigma0.5"]
    assert reads["true"] > 0 and all(abs(reads[k]) > 1e-6 for k in (*ATTRIBUTES, "zero")), reads
    for block in components.transformer.blocks:  # cut every cross-attention: the prompt cannot matter
        torch.nn.init.zeros_(block.cross_attn.o.weight)
        torch.nn.init.zeros_(block.cross_attn.o.bias)
    deaf = text_sensitivity(components, clips=4, sigmas=(0.5,), frames=5)["sigma0.5"]
    assert deaf["true"] == pytest.approx(reads["true"], rel=0.5)
    assert all(deaf[k] == 0.0 for k in (*ATTRIBUTES, "zero")), deaf


def test_cli_scores_the_grid_and_writes_json(run, tmp_path):
    out = tmp_path / "probe.json"
    argv = ["--export", str(run / "export"), "--components", str(run / "components"), "--frames", "5"]
    assert main([*argv, "--steps", "2", "--shift", "1", "3", "--clips", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [a["shift"] for a in report["adherence"]] == [1.0, 3.0]
    for found in report["adherence"]:
        assert all(0.0 <= found[k] <= 1.0 for k in ("color_ok", "shape_ok", "direction_ok", "all_ok", "subject"))
    assert set(report["sensitivity"]["sigma0.85"]) == {"true", *ATTRIBUTES, "zero"}
