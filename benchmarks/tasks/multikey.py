"""Multi-key needle: four facts with near-identical keys (same noun, different adjective); ask for one.

RULER's multi-key setting (Hsieh et al., 2024) with distractors made deliberately similar: the asked
key's needle sits at the cell's depth, the three distractors at seeded depths elsewhere. Values are
7 digits. Scores as `benchmarks.tasks.retrieval`: ``hit`` and ``gold_nll`` of the asked key's value.
"""

from __future__ import annotations

import random

from benchmarks.tasks import Item, retrieval
from benchmarks.tasks.needle import PREFIX, QUESTION
from kvcrush.data import _ADJECTIVES, _NOUNS, haystack

NAME = "multikey"
PRIMARY = "hit"
HIGHER_IS_BETTER = True
N_KEYS = 4


def build(tokenizer, settings: retrieval.RetrievalSettings) -> list[Item]:
    items = []
    for length, depth, seed in retrieval.seeds_and_depths(settings):
        rng = random.Random(f"multikey-{seed}")
        noun = rng.choice(_NOUNS)
        keys = [f"{adjective}-{noun}" for adjective in rng.sample(_ADJECTIVES, N_KEYS)]
        values = [retrieval.value(rng, "digits") for _ in keys]
        depths = [depth] + [rng.random() for _ in keys[1:]]
        sentences = [retrieval.needle(k, v) for k, v in zip(keys, values, strict=True)]
        context = haystack(tokenizer, length, sentences, depths, seed)
        items.append(retrieval.make_item(NAME, tokenizer, length, depth, seed, context, QUESTION.format(key=keys[0]),
                                         PREFIX.format(key=keys[0]), values[0],
                                         {"key": keys[0], "distractors": ";".join(keys[1:])}))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    return retrieval.score_reference(outcome)
