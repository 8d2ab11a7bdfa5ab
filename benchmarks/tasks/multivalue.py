"""Multi-value needle: one key with three values in three needles; all three must be returned.

RULER's multi-value setting (Hsieh et al., 2024). The first needle sits at the cell's depth, the
other two at seeded depths; the gold answer lists the values in the order they appear in the text
(" v1, v2, v3"), after the prefix "The special magic numbers for {key} mentioned in the provided
text are:". Scores under teacher forcing of that answer: ``hit`` = every value's tokens are the argmax
given the gold text before them (spaces and separators are teacher-forced but not required), ``values_hit``
= the share of values that are, ``gold_nll`` = the whole answer's mean NLL (nats/token).
"""

from __future__ import annotations

import random

from benchmarks.tasks import Item, retrieval
from kvcrush.data import haystack, needle_key_value

NAME = "multivalue"
PRIMARY = "hit"
HIGHER_IS_BETTER = True
N_VALUES = 3
QUESTION = "What are all the special magic numbers for {key} mentioned in the provided text?"
PREFIX = "The special magic numbers for {key} mentioned in the provided text are:"
SEPARATOR = ", "


def build(tokenizer, settings: retrieval.RetrievalSettings) -> list[Item]:
    items = []
    for length, depth, seed in retrieval.seeds_and_depths(settings):
        key, _ = needle_key_value(seed)
        rng = random.Random(f"multivalue-{seed}")
        values = [retrieval.value(rng, "digits") for _ in range(N_VALUES)]
        depths = [depth] + [rng.random() for _ in values[1:]]
        order = sorted(range(N_VALUES), key=lambda i: depths[i])
        context = haystack(tokenizer, length, [retrieval.needle(key, v) for v in values], depths, seed)
        answer = SEPARATOR.join(values[i] for i in order)
        item = retrieval.make_item(NAME, tokenizer, length, depth, seed, context, QUESTION.format(key=key),
                                   PREFIX.format(key=key), answer, {"key": key})
        item.meta["value_spans"] = value_spans(tokenizer, [values[i] for i in order])
        items.append(item)
    return items


def value_spans(tokenizer, values: list[str]) -> list[tuple[int, int]]:
    """Token ranges `[start, end)` of each value inside the gold answer's ids (prefix-stable BPE pieces)."""
    spans, text = [], ""
    for i, val in enumerate(values):
        if i:
            text += SEPARATOR
        start = len(retrieval.gold_ids(tokenizer, text)) if text else 0
        text += val
        ids = retrieval.gold_ids(tokenizer, text)
        while start < len(ids) and not tokenizer.decode([ids[start]]).strip():
            start += 1  # the space before a value is teacher-forced, not required
        spans.append((start, len(ids)))
    return spans


def score(item: Item, outcome, full) -> dict[str, float]:
    reference = outcome.reference
    hits = [reference.span_greedy(start, end) for start, end in item.meta["value_spans"]]
    return {"hit": float(all(hits)), "values_hit": sum(hits) / len(hits), "gold_nll": reference.nll}
