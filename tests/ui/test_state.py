"""Session stores bounded in bytes: the least recently used selections go first, shared scores count once."""

from __future__ import annotations

import kvcrush
from kvcrush.sizes import unique_nbytes
from ui.state import SelectionStore, session_byte_limit


def _selections(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt[:2000])
    return prepared, [prepared.select(kvcrush.make_policy("kvcrush", budget=budget)) for budget in (0.2, 0.3, 0.4)]


def test_selections_of_one_prompt_share_its_scores(tiny_lm, essay_prompt):
    _, traces = _selections(tiny_lm, essay_prompt)
    scores = unique_nbytes(layer.score_view.source for layer in traces[0].layers if layer.score_view is not None)
    assert scores > 0  # the prepared prompt's scores, which every trace views
    each = [unique_nbytes(trace.tensors()) for trace in traces]
    assert unique_nbytes(t for trace in traces for t in trace.tensors()) == sum(each) - 2 * scores


def test_the_store_drops_least_recently_used_selections_beyond_its_bytes(tiny_lm, essay_prompt):
    _, traces = _selections(tiny_lm, essay_prompt)
    two = unique_nbytes(t for trace in traces[1:] for t in trace.tensors())
    store = SelectionStore(capacity=16, byte_limit=two)
    for index, trace in enumerate(traces):
        store.set(str(index), trace)
    assert len(store) == 2 and store.get("0") is None and store.get("2") is traces[2]
    assert store.nbytes() <= two
    alone = SelectionStore(capacity=16, byte_limit=1)
    alone.set("a", traces[0])
    assert len(alone) == 1  # the newest value always stays, whatever it holds


def test_the_session_limit_reads_its_setting(monkeypatch):
    monkeypatch.setenv("KVCRUSH_APP_SESSION_MIB", "64")
    assert session_byte_limit() == 64 * 2**20
    monkeypatch.setenv("KVCRUSH_APP_SESSION_MIB", "lots")
    assert session_byte_limit() == 1024 * 2**20
