"""Sidebar widgets generated from a policy's declared options (`ui.policy_options`).

One widget per `OptionSpec`: a selectbox for choices, a checkbox for flags, a slider for a bounded
fraction-like float, a number input for the other numbers (an empty box, meaning "the policy decides",
for options whose default is None). Keys are `opt_<policy>_<option>` (e.g. `opt_snapkv_window`):
stable and readable for tests, and distinct per declaring policy, so a base's option and the same
name on another policy never share a widget.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from kvcrush.policies.options import OptionSpec
from ui.policy_options import OptionGroup


def key(owner: str, name: str) -> str:
    return f"opt_{owner}_{name}"


# Words of option names that people write otherwise than lower case (`kv_bits` -> "KV bits").
ACRONYMS = {"kv": "KV", "qa": "QA", "nll": "NLL", "gqa": "GQA", "rope": "RoPE", "id": "ID", "ids": "IDs"}
# Options whose name alone says less than the usual words for them.
LABELS = {"sink": "Sink tokens", "recent": "Recent tokens", "budget_bytes": "Budget in bytes"}


def label(name: str) -> str:
    """An option's widget label in the words people use: `crush_fraction` -> 'Crush fraction', `kv_bits` ->
    'KV bits' (`ACRONYMS`), `sink` -> 'Sink tokens' (`LABELS`). The declarations (`kvcrush.policies.options`)
    carry no label field, so it is derived here from the name."""
    if name in LABELS:
        return LABELS[name]
    words = [ACRONYMS.get(word, word) for word in name.split("_") if word]
    if not words:
        return name
    first = words[0]
    words[0] = first if first in ACRONYMS.values() else first.capitalize()
    return " ".join(words)


def _number(spec: OptionSpec, widget_key: str) -> Any:
    kind = float if spec.kind is float else int
    bounded = spec.minimum is not None and spec.maximum is not None
    if kind is float and bounded and spec.default is not None:
        step = float(spec.step) if spec.step else (float(spec.maximum) - float(spec.minimum)) / 100
        return st.slider(label(spec.name), float(spec.minimum), float(spec.maximum), float(spec.default), step,
                         key=widget_key, help=spec.help)
    return st.number_input(
        label(spec.name),
        min_value=None if spec.minimum is None else kind(spec.minimum),
        max_value=None if spec.maximum is None else kind(spec.maximum),
        value=None if spec.default is None else kind(spec.default),
        step=kind(spec.step) if spec.step else kind(1 if kind is int else 0.01),
        key=widget_key, help=spec.help + (" Empty: the policy's own default." if spec.optional else ""),
        placeholder="policy default" if spec.optional else None,
    )


def widget(spec: OptionSpec, widget_key: str) -> Any:
    """Render one option; returns its current value."""
    if spec.choices:
        choices = list(spec.choices)
        index = choices.index(spec.default) if spec.default in choices else 0
        return st.selectbox(label(spec.name), choices, index=index, key=widget_key, help=spec.help)
    if spec.kind is bool:
        return st.checkbox(label(spec.name), value=bool(spec.default), key=widget_key, help=spec.help)
    if spec.kind in (int, float):
        return _number(spec, widget_key)
    return st.text_input(label(spec.name), value="" if spec.default is None else str(spec.default), key=widget_key,
                         help=spec.help)


def render(group: OptionGroup) -> dict[str, Any]:
    """Every option of one group, in declaration order; returns name -> value."""
    return {spec.name: widget(spec, key(group.owner, spec.name)) for spec in group.specs}
