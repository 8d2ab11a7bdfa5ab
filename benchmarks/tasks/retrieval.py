"""What the three retrieval tasks share: needle sentences, value formats, the answer prefix, scoring.

After RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?"): needles "One of the special magic numbers for {key} is: {value}." in Paul Graham essay
filler (`kvcrush.data.haystack`), a question, and an *answer prefix* after the chat template's
assistant header ("The special magic number for {key} mentioned in the provided text is"), so the
answer starts right away.

Scoring needs no decoding loop. The gold answer's tokens are teacher-forced after the prefix
(`kvcrush.decoding.score_reference`), which gives in one forward:

- **hit**: every gold token is the argmax given the tokens before it, i.e. greedy decoding would
  write exactly the gold answer first (identical to decoding and comparing; checked against real
  decoding in tests/benchmarks/test_tasks.py);
- **gold_nll**: the gold answer's mean negative log-likelihood, nats per token: a dense score that
  moves before a hit flips.

Prompt i of a task uses seed ``seed * 10_000 + i`` for its key, values, depths and filler offset.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks.tasks import Item
from kvcrush.data import NEEDLE_TEMPLATE
from kvcrush.prompts import EncodedPrompt, encode_prompt

VALUE_FORMATS = ("digits", "groups", "words")
# Plain words that are one token each with a leading space in common BPE vocabularies.
_CODE_WORDS = tuple(
    (
        "apple bread cloud dream eagle flame grape horse juice lemon mango night ocean pilot queen river "
        "stone tiger uncle voice water youth zebra honey metal paper sugar tower wheel storm glass "
        "plant smoke frost coral light sheep cabin robot"
    ).split()
)


@dataclass(frozen=True)
class RetrievalSettings:
    """Prompts per (length, depth) cell: `samples` split evenly over `depths` (at least one per depth)."""

    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    samples: int = 30  # per length (all depths together)
    seed: int = 0


def seeds_and_depths(settings: RetrievalSettings) -> list[tuple[int, float, int]]:
    """(length, depth, seed) of every prompt: depths cycle so each gets samples / len(depths)."""
    out = []
    index = 0
    for length in settings.lengths:
        for i in range(max(settings.samples, len(settings.depths))):
            out.append((length, settings.depths[i % len(settings.depths)], settings.seed * 10_000 + index))
            index += 1
    return out


def value(rng: random.Random, fmt: str) -> str:
    """A needle value: 7 digits, two digit groups with a hyphen (``482-9104``), or two code words."""
    if fmt == "digits":
        return str(rng.randint(1_000_000, 9_999_999))
    if fmt == "groups":
        return f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    if fmt == "words":
        first, second = rng.sample(_CODE_WORDS, 2)
        return f"{first} {second}"
    raise ValueError(f"Unknown value format {fmt!r}; choose from {', '.join(VALUE_FORMATS)}.")


def needle(key: str, val: str) -> str:
    return NEEDLE_TEMPLATE.format(key=key, value=val)


def encode_with_prefix(tokenizer, context: str, question: str, answer_prefix: str) -> EncodedPrompt:
    """The chat-template prompt with `answer_prefix` after the assistant header (appended, uncompressed)."""
    encoded = encode_prompt(tokenizer, context, question)
    prefix_ids = tokenizer(answer_prefix, add_special_tokens=False).input_ids
    return EncodedPrompt(encoded.context_ids, encoded.question_ids, encoded.suffix_ids + prefix_ids)


def gold_ids(tokenizer, answer: str) -> list[int]:
    """The gold answer's tokens as they follow the prefix (a space, then the answer)."""
    return tokenizer(" " + answer, add_special_tokens=False).input_ids


def make_item(task: str, tokenizer, length: int, depth: float, seed: int, context: str, question: str,
              answer_prefix: str, answer: str, meta: dict) -> Item:
    return Item(
        task=task, dataset="essay-needle", length=length, sample=f"len{length}-d{depth:.2f}-s{seed}",
        encoded=encode_with_prefix(tokenizer, context, question, answer_prefix), answers=(answer,),
        reference_ids=gold_ids(tokenizer, answer), max_new_tokens=0,
        meta={"depth": depth, "seed": seed, **meta},
    )


def score_reference(outcome) -> dict[str, float]:
    """hit (greedy would write the whole gold answer) and gold_nll (nats/token) from the teacher-forced run."""
    reference = outcome.reference
    return {"hit": float(reference.greedy), "gold_nll": reference.nll}


__all__ = ["RetrievalSettings", "VALUE_FORMATS", "value", "needle", "encode_with_prefix", "gold_ids", "make_item",
           "score_reference", "seeds_and_depths"]
