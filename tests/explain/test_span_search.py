"""Finding spans: text hits, gold answers and runs an answer copied from the prompt."""

from __future__ import annotations

from kvcrush.explain import answer_spans, copied_spans, text_spans


def test_text_spans_cover_every_occurrence():
    tokens = ["The", " magic", " num", "ber", " is", " 12", "34", ".", " The", " Magic", " number"]
    spans = text_spans(tokens, "magic number")
    assert [(s.start, s.end) for s in spans] == [(1, 4), (9, 11)]
    assert [(s.start, s.end) for s in answer_spans(tokens, ("1234",))] == [(5, 7)]
    assert text_spans(tokens, "  ") == [] and text_spans(tokens, "absent") == []


def test_copied_spans_take_the_longest_runs_first():
    prompt = [5, 6, 7, 8, 9, 1, 2, 3, 4, 10, 11, 1, 2]
    answer = [0, 1, 2, 3, 4, 0, 9, 1, 2]
    spans = copied_spans(prompt, answer, min_tokens=2)
    assert (spans[0].start, spans[0].end) == (5, 9)  # 1 2 3 4
    assert (4, 7) in [(s.start, s.end) for s in spans]  # 9 1 2 (the answer's 9 1 2 run)
    assert copied_spans(prompt, [42, 43], min_tokens=2) == []
