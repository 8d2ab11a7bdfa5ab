"""Explanations of one run, read from its trace: follow a span, why a token, walk the algorithm.

    from kvcrush import explain
    fate = explain.span_fate(trace, start, end)      # [layers, kv_heads] fate codes + per-token detail
    why = explain.why_token(trace, position)         # one sentence per layer and KV head
    steps = explain.walk_steps(trace, layer, head)   # spec section 3 (4 at block level), step by step

The app's Tokens and Walk pages render these; nothing here runs the model.
"""

from kvcrush.explain.span_fate import (
    ALL_KEPT,
    EVICTED_SPAN,
    FATE_NAMES,
    PARTLY_KEPT,
    REPRESENTED,
    LostAt,
    SpanFate,
    span_fate,
)
from kvcrush.explain.span_search import TokenSpan, answer_spans, copied_spans, text_spans
from kvcrush.explain.units import LayerUnits, layer_units
from kvcrush.explain.walk import STEP_KEYS, STEP_TITLES, WalkStep, walk_steps
from kvcrush.explain.why import HeadDecision, TokenWhy, why_token

__all__ = [
    "ALL_KEPT", "PARTLY_KEPT", "REPRESENTED", "EVICTED_SPAN", "FATE_NAMES", "LostAt", "SpanFate", "span_fate",
    "TokenSpan", "answer_spans", "copied_spans", "text_spans", "LayerUnits", "layer_units",
    "STEP_KEYS", "STEP_TITLES", "WalkStep", "walk_steps", "HeadDecision", "TokenWhy", "why_token",
]
