"""Sidebar labels of policy options (`ui.option_widgets.label`): the words people use, for every declared option."""

from __future__ import annotations

import re

import kvcrush
from ui.option_widgets import ACRONYMS, label


def test_labels_read_as_words():
    assert label("kv_bits") == "KV bits"
    assert label("representative_bits") == "Representative bits"
    assert label("crush_fraction") == "Crush fraction"
    assert label("sink") == "Sink tokens" and label("recent") == "Recent tokens"
    assert label("budget_bytes") == "Budget in bytes"
    assert label("window") == "Window"


def test_every_declared_option_gets_a_readable_label():
    names = {spec.name for cls in kvcrush.POLICIES.values() for spec in kvcrush.declared_options(cls)}
    assert "kv_bits" in names
    for name in names:
        text = label(name)
        assert "_" not in text and text[0].isupper(), (name, text)
        for acronym in ACRONYMS.values():  # never "Kv", "kV": an acronym keeps its capitals wherever it stands
            assert not re.search(rf"\b{acronym.lower()}\b", text, flags=re.IGNORECASE) or acronym in text, text
