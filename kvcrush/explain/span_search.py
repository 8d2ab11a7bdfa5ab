"""Spans worth following: where a text occurs in the prompt's tokens, and what an answer copied from it.

Token strings are the trace's (`RunTrace.token_strings`, each token decoded alone), so character
offsets map back to token positions exactly as the views show the tokens.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

MAX_HITS = 20  # occurrences listed per text


@dataclass(frozen=True)
class TokenSpan:
    """Prompt tokens `[start, end)` and where the span came from (`source`: a short description)."""

    start: int
    end: int
    source: str

    @property
    def n_tokens(self) -> int:
        return self.end - self.start


def text_spans(token_strings: list[str], text: str, source: str = "text", limit: int = MAX_HITS) -> list[TokenSpan]:
    """Every occurrence of `text` (case-insensitive, surrounding spaces ignored) as the tokens covering it."""
    needle = text.strip().lower()
    if not needle:
        return []
    joined = "".join(token_strings).lower()
    ends = list(accumulate(len(t) for t in token_strings))  # ends[i]: character offset after token i
    spans: list[TokenSpan] = []
    at = joined.find(needle)
    while at >= 0 and len(spans) < limit:
        first = bisect_right(ends, at)
        last = bisect_right(ends, at + len(needle) - 1)
        spans.append(TokenSpan(first, last + 1, f"{source} {text.strip()!r}"))
        at = joined.find(needle, at + 1)
    return spans


def answer_spans(token_strings: list[str], answers: tuple[str, ...] | list[str]) -> list[TokenSpan]:
    """Where each gold answer (a needle's value, a SQuAD answer) occurs in the prompt."""
    spans: list[TokenSpan] = []
    for answer in answers:
        spans.extend(text_spans(token_strings, answer, "gold answer"))
    return spans


def copied_spans(prompt_ids: list[int], answer_ids: list[int], min_tokens: int = 3,
                 limit: int = MAX_HITS) -> list[TokenSpan]:
    """Runs of the answer's tokens found verbatim in the prompt, longest first.

    Greedy: the longest common run of tokens (at least `min_tokens`) is taken first, then the longest among
    answer tokens not used yet, and so on; each run is reported at every place the prompt holds it.
    """
    where: dict[int, list[int]] = {}
    for position, token in enumerate(prompt_ids):
        where.setdefault(token, []).append(position)
    runs: list[tuple[int, int, int]] = []  # (length, answer start, prompt start)
    for i, token in enumerate(answer_ids):
        for j in where.get(token, ()):
            length = 0
            while (i + length < len(answer_ids) and j + length < len(prompt_ids)
                   and answer_ids[i + length] == prompt_ids[j + length]):
                length += 1
            if length >= min_tokens:
                runs.append((length, i, j))
    runs.sort(key=lambda run: (-run[0], run[1], run[2]))
    used = [False] * len(answer_ids)
    spans: list[TokenSpan] = []
    taken: set[tuple[int, int]] = set()
    for length, i, j in runs:
        if (i, length) not in taken and any(used[i : i + length]):
            continue
        taken.add((i, length))
        used[i : i + length] = [True] * length
        spans.append(TokenSpan(j, j + length, f"copied by the answer (answer tokens {i}–{i + length - 1})"))
        if len(spans) >= limit:
            break
    return spans
