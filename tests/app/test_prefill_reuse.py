"""One prefill per prompt: the app's pages select and decode from the session's prepared prompt.

Counted on the real tiny model, never mocked: a forward pre-hook on the app's own model records the
length of every forward's input ids. A prefill is a forward over the whole prompt (about 1,000 tokens
of the built-in example); appending the question and template (about 20 tokens), teacher-forcing a
reference answer (4 tokens here) and decoding (1 token) are far shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import kvcrush
from kvcrush.policies.base import Policy
from kvcrush.policies.options import option
from tests.app.helpers import html_bodies, legend_counts, metric, no_errors, token_view

PREFILL_MIN = 200  # input ids: more than any tail, reference or decode step, far less than the prompt


@pytest.fixture
def forwards():
    """Lengths of the input ids of every forward of the app's model (loaded once per process, shared)."""
    from ui.model import _load, _placement

    lm = _load("random:tiny", _placement("auto"))  # the key the app's own lookup resolves "auto" to
    lengths: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        lengths.append(int(ids.shape[-1]))

    handle = lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    yield lengths
    handle.remove()


def prefills(lengths: list[int]) -> int:
    return sum(n >= PREFILL_MIN for n in lengths)


def session_prompt(at) -> kvcrush.PreparedPrompt:
    return at.session_state["_prepared"].prepared


def test_budget_option_and_base_changes_never_prefill_again(app, forwards):
    at = app.run()
    no_errors(at)
    prepared = session_prompt(at)
    assert prefills(forwards) == 1 and prepared.prefills == 1
    first = legend_counts(at)
    decoded = len(forwards)

    at.slider(key="budget_pct").set_value(10).run()
    no_errors(at)
    assert legend_counts(at)["evicted"] > first["evicted"]
    assert len(forwards) > decoded  # the answer was decoded again ...
    assert prefills(forwards) == 1  # ... from the same prefill
    assert metric(at, "Prefill (reused)")
    assert any('class="kv-generated"' in body for body in html_bodies(at))

    at.slider(key="opt_kvcrush_crush_fraction").set_value(0.5).run()
    at.selectbox(key="base").set_value("h2o").run()  # a new scorer: scored from the kept hidden states
    at.selectbox(key="policy").set_value("tova").run()
    no_errors(at)
    assert "tova" in at.markdown[0].value
    assert prefills(forwards) == 1
    assert session_prompt(at) is prepared and prepared.prefills == 1


def test_compare_with_three_policies_costs_one_prefill(app, forwards):
    at = app.switch_page("pages/compare.py").run()
    at.multiselect(key="cmp_policies").select("h2o").run()
    no_errors(at)
    assert sum('class="kv-diff"' in body for body in html_bodies(at)) == 3
    assert list(at.dataframe[0].value["policy"]) == ["kvcrush (snapkv)", "snapkv", "h2o"]
    assert prefills(forwards) == 1 and session_prompt(at).prefills == 1


def test_sweep_of_two_policies_and_three_budgets_costs_one_prefill(app, forwards):
    at = app.switch_page("pages/sweep.py").run()
    at.multiselect(key="sweep_policies").set_value(["kvcrush", "snapkv"])
    at.multiselect(key="sweep_budgets").set_value([10, 25, 50])
    at.button(key="sweep_run").click().run()
    no_errors(at)
    frame = at.dataframe[0].value
    assert len(frame) == 1 + 2 * 3 and frame["nll"].notna().all()
    assert prefills(forwards) == 1 and session_prompt(at).prefills == 1


def test_query_aware_question_renders_as_question_and_replaces_the_prepared_prompt(app):
    at = app.run()
    agnostic = session_prompt(at)
    assert "question" not in legend_counts(at)  # query-agnostic: the question is appended, not shown
    at.checkbox(key="query_aware").check().run()
    no_errors(at)
    prepared = session_prompt(at)
    assert prepared is not agnostic and prepared.query_aware  # one prepared prompt per session
    n_question = prepared.n_question
    assert n_question > 0 and legend_counts(at)["question"] == n_question
    at.text_input(key="tok_find").input("What is the special magic number").run()
    no_errors(at)
    assert 0 < token_view(at).count('class="kvt kvt-question"') <= n_question


def test_sidebar_widgets_follow_the_policy_declarations(app):
    at = app.run()
    window = at.number_input(key="opt_snapkv_window")  # KVCrush's base section
    spec = next(s for s in kvcrush.declared_options(kvcrush.POLICIES["snapkv"]) if s.name == "window")
    assert window.value == spec.default and window.help == spec.help and window.max == spec.maximum
    at.selectbox(key="policy").set_value("snapkv").run()
    at.number_input(key="opt_snapkv_window").set_value(8).run()
    no_errors(at)
    assert "window=8" in at.markdown[0].value
    at.selectbox(key="policy").set_value("h2o").run()
    assert at.selectbox(key="opt_h2o_head_reduction").options == ["group", "all"]


@dataclass
class EveryOther(Policy):
    """A policy that exists only in this test: the sidebar must offer it and its option unchanged."""

    name = "every_other"
    help = "Test policy: keeps tokens at multiples of the stride first."
    color = "#123456"

    stride: int = option(2, "Distance between favoured tokens.", minimum=1, maximum=8, scorer=True)

    def score(self, layer) -> torch.Tensor:
        favoured = (torch.arange(layer.n_context) % self.stride == 0).float()
        return favoured.expand(layer.kv_heads, -1).clone()


def test_a_new_policy_needs_no_ui_edit(app, monkeypatch):
    monkeypatch.setitem(kvcrush.POLICIES, EveryOther.name, EveryOther)
    at = app.run()
    at.selectbox(key="policy").set_value("every_other").run()
    stride = at.number_input(key="opt_every_other_stride")
    assert stride.value == 2 and stride.help == "Distance between favoured tokens."
    stride.set_value(4).run()
    no_errors(at)
    assert "every_other" in at.markdown[0].value and "stride=4" in at.markdown[0].value
    assert legend_counts(at)["kept"] > 0


def test_changing_the_prompt_frees_the_prepared_prompt_even_without_a_run(app):
    at = app.run()
    assert "_prepared" in at.session_state
    at.radio(key="prompt_source").set_value("Paste text").run()  # no text yet: nothing runs
    assert "_prepared" not in at.session_state
