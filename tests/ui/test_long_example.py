"""The built-in long example (issue 23): ~7.5k tokens of the packaged tokenizer, four needles, each followable."""

from __future__ import annotations

import pytest

import kvcrush
from kvcrush import data
from kvcrush.explain import answer_spans, text_spans
from kvcrush.models.shapes import SHAPES

MODEL_LIMIT = SHAPES["smollm2-135m"]["max_position_embeddings"]  # 8,192, as the packaged model's config
NEW_TOKENS = 32  # the app's default answer length


@pytest.fixture(scope="module")
def tokenizer():
    from kvcrush.models.loading import packaged_tokenizer

    return packaged_tokenizer()


@pytest.fixture(scope="module")
def long_example(tokenizer):
    return data.builtin_examples(tokenizer)[data.LONG_EXAMPLE]


def test_it_is_about_seven_and_a_half_thousand_tokens_and_fits_the_model(tokenizer, long_example):
    encoded = kvcrush.encode_prompt(tokenizer, long_example.context, long_example.question)
    assert 7_000 <= len(encoded.all_ids) <= 7_900
    assert len(encoded.all_ids) + NEW_TOKENS <= MODEL_LIMIT


def test_every_needle_is_in_the_prompt_at_its_own_depth(tokenizer, long_example):
    assert len(long_example.needles) == len(data.LONG_DEPTHS) >= 3
    context = long_example.context
    where = [context.find(needle) / len(context) for needle in long_example.needles]
    assert all(w >= 0 for w in where)
    for found, depth in zip(where, sorted(data.LONG_DEPTHS), strict=True):
        assert abs(found - depth) < 0.05
    values = [needle.rsplit(" ", 1)[1].rstrip(".") for needle in long_example.needles]
    keys = [needle.split(" for ", 1)[1].split(" is:")[0] for needle in long_example.needles]
    assert len(set(values)) == len(values) and len(set(keys)) == len(keys)
    assert long_example.answers[0] in values and keys[values.index(long_example.answers[0])] in long_example.question


def test_each_needle_is_followable_in_the_prompt_tokens(tokenizer, long_example):
    """What the Tokens page does: the gold answer and every needle's key and value are found as token spans."""
    encoded = kvcrush.encode_prompt(tokenizer, long_example.context, long_example.question)
    strings = [tokenizer.decode([i]) for i in encoded.context_ids]
    gold = answer_spans(strings, long_example.answers)
    assert len(gold) == 1
    starts = []
    for needle in long_example.needles:
        key = needle.split(" for ", 1)[1].split(" is:")[0]
        value = needle.rsplit(" ", 1)[1].rstrip(".")
        key_hits, value_hits = text_spans(strings, key), text_spans(strings, value)
        assert len(key_hits) == 1 and len(value_hits) == 1, needle
        assert 0 < value_hits[0].start - key_hits[0].start < 12
        starts.append(value_hits[0].start)
    assert starts == sorted(starts) and gold[0].start in starts
    assert starts[0] > 500 and starts[-1] < len(strings) - 500  # spread over the prompt, not bunched at an end
