"""The presentation helpers in ui/ on a real trace of the tiny model (no Streamlit session needed)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kvcrush
from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE, STATUS_NAMES
from ui import colors, embedding, memory_panel, policy_options, textdiff
from ui import tokens as tok
from ui import unit_view as units
from ui.state import ModelChoice, PolicyConfig, PromptInput, ResultStore, RunRecord, RunRequest


@pytest.fixture(scope="module")
def run():
    lm = kvcrush.load_model("random:tiny", device="cpu")
    text = "Alpha <b>beta</b> & gamma.\nDelta \"epsilon\" zeta. " * 30
    return kvcrush.prepare(lm, text).generate(kvcrush.make_policy("kvcrush", 0.3), max_new_tokens=2)


def test_token_table_matches_the_trace(run):
    trace = run.trace
    layer = trace.layers[0]
    table = tok.token_table(trace, layer, head=1)
    assert len(table) == trace.n_context
    assert (table["status_code"].to_numpy() == layer.token_status(1).numpy()).all()
    middle = slice(layer.middle_start, layer.middle_end)
    np.testing.assert_allclose(table["score"].to_numpy()[middle], layer.scores[1].numpy())
    np.testing.assert_allclose(table["score_h0"].to_numpy()[middle], layer.scores[0].numpy())
    assert table["distance"].to_numpy()[middle].tolist() == layer.distances.tolist()
    assert set(table.loc[table["bucket"] >= 0, "position"]) == set(layer.candidates.tolist())


def test_tokens_html_escapes_and_carries_tooltips(run):
    trace = run.trace
    table = tok.token_table(trace, trace.layers[0], 0)
    body = tok.tokens_html(table, 0, len(table))
    assert "<b>" not in body and "&lt;" in body and "&amp;" in body
    assert body.count('<span class="kvt ') == len(table)
    titles = re.findall(r'title="([^"]*)"', body)
    assert len(titles) == len(table) and all("status: " in t for t in titles)
    assert "&quot;" in body  # a token's quote inside title="..." is escaped


def test_no_op_layers_show_everything_kept(run):
    lm = kvcrush.load_model("random:tiny", device="cpu")
    trace = kvcrush.prepare(lm, "short text " * 20).select(kvcrush.make_policy("snapkv", 1.0))
    status = tok.layer_status(trace.layers[0], 0)
    assert (status == IMPORTANT).all()


def test_find_token():
    tokens = ["The", " quick", " brown", " fox"]
    assert tok.find_token(tokens, "brown fox") == 2
    assert tok.find_token(tokens, "QUICK") == 1
    assert tok.find_token(tokens, "zebra") is None


def test_unit_view_token_and_block(run):
    trace = run.trace
    view = units.unit_view(trace, trace.layers[1])
    assert view.bits.shape == (view.n_units, 4)
    assert (view.status[view.candidate] != IMPORTANT).all()
    assert int((view.status == REPRESENTATIVE).sum()) == trace.layers[1].representatives.numel()
    order = units.order(view, "distance")
    assert (np.diff(view.distances[order]) >= 0).all()
    table = units.bucket_table(view)
    assert len(table) == len(trace.layers[1].buckets)
    assert table["size"].sum() == int(view.candidate.sum())

    lm = kvcrush.load_model("random:tiny", device="cpu")
    policy = kvcrush.make_policy("kvcrush", 0.5, granularity="block", block_size=4)
    block = kvcrush.prepare(lm, "Some words to fill blocks. " * 40).select(policy)
    bview = units.unit_view(block, block.layers[0])
    assert bview.granularity == "block" and bview.bits.shape[1] == 16
    assert (bview.ends - bview.starts == 4).all()
    assert bview.distances.tolist() == block.layers[0].distances.tolist()


def test_pca_projection_is_cached_and_two_dimensional(run):
    bits = units.unit_view(run.trace, run.trace.layers[0]).bits
    coords, used, note = embedding.embed(bits, "PCA")
    assert coords.shape == (len(bits), 2) and used == "PCA" and "distinct signatures" in note
    again, _, _ = embedding.embed(bits, "PCA")
    assert np.array_equal(coords, again)


def test_diff_html_marks_changes_and_escapes():
    body = textdiff.diff_html("the <cat> sat", "the dog sat")
    assert '<ins class="kv-ins"' in body and '<del class="kv-del"' in body
    assert "&lt;cat&gt;" in body and "<cat>" not in body
    assert textdiff.similarity("a b c", "a b c") == 1.0


def test_colours_are_distinct_and_cover_every_status_and_policy():
    assert set(colors.STATUS_COLORS) == set(range(len(STATUS_NAMES))) | {colors.DECODE_EVICTED}
    assert len(set(colors.STATUS_COLORS.values())) == len(colors.STATUS_COLORS)
    assert set(colors.POLICY_COLORS) == set(kvcrush.POLICIES)
    assert len(set(colors.POLICY_COLORS.values())) == len(colors.POLICY_COLORS)
    kvcrush_colour = colors.POLICY_COLORS["kvcrush"]
    assert colors.policy_color("kvcrush (snapkv)") == colors.policy_color("kvcrush-h2o") == kvcrush_colour
    scale = colors.status_colorscale()
    assert scale[0][1] == colors.STATUS_COLORS[EVICTED] and scale[-1][0] == 1.0


def test_policy_config_normalises_and_builds():
    config = PolicyConfig(name="snapkv", budget=0.5, base="h2o", options=(("crush_fraction", 0.9), ("window", 32)))
    assert config.normalized() == PolicyConfig(name="snapkv", budget=0.5)  # undeclared and default values dropped
    assert PolicyConfig(name="full", budget=0.1).normalized().budget == 1.0
    assert PolicyConfig().normalized().base == "snapkv"  # KVCrush's declared default base
    policy = PolicyConfig(name="kvcrush", budget=64, base="h2o", options=(("anchor", "mean"), ("recent", 8))).build()
    assert policy.describe()["base"]["name"] == "h2o" and policy.anchor == "mean" and policy.base.recent == 8
    with pytest.raises(kvcrush.KVCrushError):
        PolicyConfig(name="kvcrush", options=(("anchor", "sideways"),)).build()
    # Float widgets and option order never split a cache key; switching policy keeps the shared options.
    noisy = PolicyConfig(options=(("window", 64.0), ("crush_fraction", 0.1 + 0.2)))
    assert noisy.normalized() == PolicyConfig(options=(("crush_fraction", 0.3), ("window", 64))).normalized()
    assert noisy.with_name("snapkv").options == (("window", 64),)
    assert noisy.label == "kvcrush (snapkv)" and noisy.settings_text == "crush_fraction=0.3, window=64"


def test_option_groups_come_from_the_declarations():
    own, base = policy_options.groups("kvcrush", "snapkv")
    assert [spec.name for spec in own.specs] == [s.name for s in kvcrush.declared_options(kvcrush.POLICIES["kvcrush"])
                                                 if s.name not in ("sink", "recent")]
    assert {"window", "kernel", "pooling", "sink", "recent"} <= {spec.name for spec in base.specs}
    (only,) = policy_options.groups("h2o")
    assert {spec.name for spec in only.specs} == {s.name for s in kvcrush.declared_options(kvcrush.POLICIES["h2o"])}


def test_result_store_is_a_small_lru(run):
    store = ResultStore(capacity=2)
    prompt = PromptInput("text", "t", "x")
    records = [RunRecord(RunRequest(ModelChoice(), PolicyConfig(budget=b), prompt, 4, False), run, 0.1)
               for b in (0.1, 0.2, 0.3)]
    for record in records:
        store.put(record)
    assert len(store) == 2 and store.get(records[0].request.key) is None


def test_run_request_key_ignores_settings_the_policy_does_not_use():
    prompt = PromptInput("text", "t", "some text")

    def request(policy: PolicyConfig, **changes) -> RunRequest:
        fields = {"model": ModelChoice(), "policy": policy.normalized(), "prompt": prompt, "max_new_tokens": 8,
                  "query_aware": False, **changes}
        return RunRequest(**fields)

    def key(policy: PolicyConfig, **changes) -> str:
        return request(policy, **changes).key

    h2o = PolicyConfig(name="h2o")
    assert key(h2o) == key(PolicyConfig(name="h2o", options=(("crush_fraction", 0.9),)))
    assert key(h2o) != key(PolicyConfig(name="h2o", budget=0.5))
    assert key(PolicyConfig()) != key(PolicyConfig(), reference_ids=(1, 2))
    assert key(PolicyConfig()) != key(PolicyConfig(), prompt=PromptInput("text", "t", "other text"))
    # Decoding settings change the result but neither the selection nor the prefill.
    longer = request(PolicyConfig(), max_new_tokens=64)
    assert longer.selection_key == request(PolicyConfig()).selection_key
    assert longer.prompt_key == request(h2o).prompt_key != request(h2o, query_aware=True).prompt_key


def test_memory_budget_fraction():
    assert memory_panel.budget_fraction(0.25, 1000) == 0.25
    assert memory_panel.budget_fraction(250, 1000) == 0.25
    assert memory_panel.budget_fraction(5000, 1000) == 1.0


