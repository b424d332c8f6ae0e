"""A word-level tokenizer with umT5's special ids, for small models with a closed vocabulary.

Built locally with ``tokenizers`` (nothing to download): lower-cased, split on whitespace and
punctuation, ``</s>`` appended like umT5; unknown words map to ``<unk>``.

>>> tok = word_tokenizer(["a", "red", "circle"])
>>> tok("A red circle")["input_ids"], tok("a blue circle")["input_ids"]
([3, 4, 5, 1], [3, 2, 5, 1])
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["word_tokenizer"]


def word_tokenizer(words: Iterable[str], model_max_length: int = 512):
    """A ``PreTrainedTokenizerFast`` over ``words`` (ids from 3 on, in order; pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )
