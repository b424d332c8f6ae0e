"""The shipped prompt-embedding table of the shapes models: equal to the text encoder, never used stale.

The table holds the encoder's float32 output on the machine that wrote it; on another CPU the same
encoder rounds differently (its matmul kernels differ: ``python -m pyrflow_fast.shapes.components
--compare`` measured 4.4e-7 of the largest entry on an AVX-512 machine), so the shipped table is
compared within :data:`ROUNDING` and a table written here bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch

import pyrflow_fast.shapes.components as shapes_components
from pyrflow_fast.pipeline import load_components
from pyrflow_fast.shapes import MODELS, SHIPPED, model_dir
from pyrflow_fast.shapes.components import (
    EMBEDDINGS_FILE,
    TEXT_DIM,
    TEXT_LEN,
    all_prompts,
    load_embeddings,
    main,
    table_error,
    write_embeddings,
)
from pyrflow_fast.shapes.sampling import load, sample

# first, last, and prompts that differ from their neighbours in one word each
SOME = (0, 1, 10, 40, 123, 479)
ROUNDING = dict(rtol=1e-5, atol=1e-6)  # float32 kernels of another CPU


@pytest.fixture(scope="module")
def encoder():
    """The distilled model's components with its text encoder, without the transformer."""
    return load_components(model_dir("distilled"), transformer=False, text_len=TEXT_LEN)


def test_shipped_table_covers_every_prompt_and_every_model():
    table = load_embeddings(model_dir("distilled"))
    assert table is not None and list(table) == all_prompts()
    assert {tuple(e.shape) for e in table.values()} == {(TEXT_LEN, TEXT_DIM)}
    for name in MODELS:  # the four checkpoints share one frozen text encoder
        assert load_embeddings(model_dir(name)) is not None, name
    assert (SHIPPED / EMBEDDINGS_FILE).stat().st_size < 2**20


def test_shipped_table_equals_the_encoder(encoder):
    table = load_embeddings(model_dir("distilled"))
    texts = all_prompts()
    for k in SOME:  # one prompt per call, as python -m pyrflow_fast.shapes encoded before the table
        torch.testing.assert_close(table[texts[k]], encoder.encode_prompt([texts[k]])[0], **ROUNDING, msg=texts[k])
    picked = [texts[k] for k in SOME]
    torch.testing.assert_close(torch.stack([table[t] for t in picked]), encoder.encode_prompt(picked), **ROUNDING)


def test_samples_with_the_table_equal_samples_with_the_encoder():
    card, fast = load("distilled")
    assert fast.text_encoder is None and fast.tokenizer is None and fast.prompt_embeddings is not None
    slow = load_components(model_dir("distilled"))
    texts = [all_prompts()[k] for k in (5, 300)]
    a = sample(fast, card, texts, None, seed=3)
    b = sample(slow, card, texts, None, seed=3)
    torch.testing.assert_close(a.video, b.video, rtol=0, atol=1e-3)  # measured <= 1e-4 across CPUs, in [-1, 1]


def test_a_stale_table_warns_and_the_encoder_runs_then_rewriting_fixes_it(tmp_path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(model_dir("distilled"), root / "distilled")
    shutil.copy(SHIPPED / EMBEDDINGS_FILE, root / EMBEDDINGS_FILE)
    (root / "distilled" / "text_encoder" / "NOTE.txt").write_text("changed\n")  # another encoder folder
    with pytest.warns(UserWarning, match="another tokenizer or text encoder.*--write-embeddings --model-dir"):
        _, components = load("distilled", root)
    assert components.text_encoder is not None and components.prompt_embeddings is None

    texts = [all_prompts()[k] for k in SOME[:3]]
    monkeypatch.setattr(shapes_components, "all_prompts", lambda: texts)  # a quick rewrite: three prompts
    assert write_embeddings(root / "distilled") == root / EMBEDDINGS_FILE
    _, components = load("distilled", root)  # no warning (warnings are errors in this suite)
    assert components.text_encoder is None and list(components.prompt_embeddings) == texts
    encoded = load_components(root / "distilled", transformer=False, text_len=TEXT_LEN)
    shipped = load_embeddings(model_dir("distilled"))
    for t in texts:  # written here: bit for bit
        assert torch.equal(components.prompt_embeddings[t], encoded.encode_prompt([t])[0]), t
        torch.testing.assert_close(components.prompt_embeddings[t], shipped[t], **ROUNDING)
    assert table_error(root / "distilled") == 0.0


def test_compare_prints_the_shipped_tables_rounding(capsys):
    assert main(["--compare"]) == 0
    err = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert 0.0 <= err <= ROUNDING["rtol"]


def test_without_a_table_the_encoder_loads_silently(tmp_path):
    shutil.copytree(model_dir("distilled"), tmp_path / "distilled")
    _, components = load("distilled", tmp_path)
    assert components.text_encoder is not None and components.prompt_embeddings is None


def test_components_without_a_text_encoder_refuse_what_they_cannot_encode():
    path = model_dir("distilled")
    table = load_embeddings(path)
    components = load_components(path, text_encoder=False, prompt_embeddings=table)
    assert components.text_encoder is None and components.text_dim == TEXT_DIM
    with pytest.raises(ValueError, match=r"no precomputed embedding for 'a purple circle'.*text_encoder=True"):
        components.encode_prompt(["a red circle moving right over grass", "a purple circle"])
    wrong = {"a red circle moving right over grass": torch.zeros(8, TEXT_DIM)}
    with pytest.raises(ValueError, match=r"\(text_len, text_dim\) = \(16, 32\) float32.*\(8, 32\)"):
        load_components(path, text_encoder=False, prompt_embeddings=wrong)
