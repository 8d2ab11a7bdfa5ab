"""The retrieval tasks: prompts hold their needles, and the teacher-forced hit equals real greedy decoding."""

from __future__ import annotations

import pytest

from benchmarks.engines import ItemRuns
from benchmarks.tasks import multikey, multivalue, needle, retrieval
from benchmarks.tasks.retrieval import RetrievalSettings
from kvcrush import make_policy

SMALL = RetrievalSettings(lengths=(512,), depths=(0.2, 0.8), samples=3, seed=5)


def test_needle_prompts_hold_the_value_in_every_format(packaged_lm):
    tokenizer = packaged_lm.tokenizer
    items = needle.build(tokenizer, SMALL)
    assert [item.meta["format"] for item in items] == ["digits", "groups", "words"]
    assert [item.meta["depth"] for item in items] == [0.2, 0.8, 0.2]
    for item in items:
        context = tokenizer.decode(item.encoded.context_ids)
        assert retrieval.needle(item.meta["key"], item.answers[0]) in context
        assert abs(item.encoded.n_context - 512) <= 40  # the chat template's header adds a few tokens
        prefix = tokenizer.decode(item.encoded.suffix_ids)
        assert prefix.endswith(needle.PREFIX.format(key=item.meta["key"]))
        assert tokenizer.decode(item.reference_ids) == " " + item.answers[0]
    assert needle.build(tokenizer, SMALL)[0].encoded == items[0].encoded  # seeded


def test_multikey_and_multivalue_prompts(packaged_lm):
    tokenizer = packaged_lm.tokenizer
    for item in multikey.build(tokenizer, SMALL):
        context = tokenizer.decode(item.encoded.context_ids)
        keys = [item.meta["key"], *item.meta["distractors"].split(";")]
        assert len(set(keys)) == multikey.N_KEYS and len({k.split("-")[1] for k in keys}) == 1
        assert all(f"numbers for {key} is:" in context for key in keys)
        assert retrieval.needle(item.meta["key"], item.answers[0]) in context
    for item in multivalue.build(tokenizer, SMALL):
        context = tokenizer.decode(item.encoded.context_ids)
        values = item.answers[0].split(multivalue.SEPARATOR)
        assert len(values) == multivalue.N_VALUES
        positions = [context.index(retrieval.needle(item.meta["key"], v)) for v in values]
        assert positions == sorted(positions)  # the gold answer lists them in reading order
        spans = item.meta["value_spans"]
        assert [tokenizer.decode(item.reference_ids[a:b]) for a, b in spans] == values


@pytest.mark.parametrize("module", [needle, multikey, multivalue])
def test_teacher_forced_hit_equals_greedy_decoding(packaged_lm, module):
    """`hit` comes from one teacher-forced forward; real decoding must agree (full cache and compressed)."""
    item = module.build(packaged_lm.tokenizer, SMALL)[0]
    runs = ItemRuns(packaged_lm, item)
    try:
        full = runs.full()
        assert full.reference is not None and full.text == ""  # scored, not decoded
        assert module.score(item, full, full)["gold_nll"] > 0
        for policy in ("full", "snapkv", "streaming"):
            scored = runs.prepared().generate(make_policy(policy, budget=0.25), 0, reference_ids=item.reference_ids)
            greedy = runs.prepared().generate(make_policy(policy, budget=0.25), len(item.reference_ids))
            assert scored.reference.greedy == (greedy.new_token_ids == item.reference_ids), policy
            if module is not multivalue:  # multivalue's hit ignores the separators' tokens
                hit = module.score(item, scored, full)["hit"]
                assert hit == float(greedy.new_token_ids == item.reference_ids), policy
    finally:
        runs.close()
