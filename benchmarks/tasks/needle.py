"""Single needle: one key-value fact in essay filler; the value in one of three formats.

See `benchmarks.tasks.retrieval` for the prompt layout (RULER-style, with an answer prefix) and the
scores: ``hit`` (greedy decoding would write the exact value) and ``gold_nll`` (the value's mean
negative log-likelihood under teacher forcing). Prompt i uses the value format ``VALUE_FORMATS[i % 3]``
(7 digits, ``482-9104``, two code words), so every cell mixes the formats evenly.
"""

from __future__ import annotations

import random

from benchmarks.tasks import Item, retrieval
from benchmarks.tasks.retrieval import RetrievalSettings
from kvcrush.data import haystack, needle_key_value

NAME = "needle"
PRIMARY = "hit"
HIGHER_IS_BETTER = True
NeedleSettings = RetrievalSettings
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
PREFIX = "The special magic number for {key} mentioned in the provided text is"


def build(tokenizer, settings: RetrievalSettings) -> list[Item]:
    items = []
    for i, (length, depth, seed) in enumerate(retrieval.seeds_and_depths(settings)):
        key, _ = needle_key_value(seed)
        fmt = retrieval.VALUE_FORMATS[i % len(retrieval.VALUE_FORMATS)]
        val = retrieval.value(random.Random(f"needle-value-{seed}"), fmt)
        context = haystack(tokenizer, length, [retrieval.needle(key, val)], [depth], seed)
        items.append(retrieval.make_item(NAME, tokenizer, length, depth, seed, context, QUESTION.format(key=key),
                                         PREFIX.format(key=key), val, {"format": fmt, "key": key}))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    return retrieval.score_reference(outcome)
