"""kvpress's ScorerPresses as our `kvpress` policy: the same kept tokens as kvpress's own compression.

For every press `press_table()` marks supported (and the Hub-weight presses given loaded random weights), our
policy with sink=0, recent=0 and kvpress's `compute_n_kept(N, ratio)` tokens, selected from one prefill of our
engine, keeps per KV head exactly the tokens kvpress keeps when its own forward hook compresses the same
prompt on the same tiny model (or, where the press's scores tie at the cut, a top-k set of the same scores:
kvpress's `topk` breaks ties arbitrarily, ours by lower index).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import DynamicCache

import kvcrush
from kvcrush.cli import build_parser, policy_options
from kvcrush.compat import cache_kwargs
from kvcrush.errors import PolicyError
from kvcrush.policies import make_policy
from kvcrush.prompts import EncodedPrompt
from tests.conftest import kvpress_or_skip

kvpress = kvpress_or_skip()  # skips (or fails under KVCRUSH_REQUIRE_KVPRESS=1) without a usable kvpress

from kvpress.presses.kvzap_press import KVzapConfig, KVzapModel  # noqa: E402
from kvpress.utils import compute_n_kept  # noqa: E402

from kvcrush.policies.press import (  # noqa: E402
    NEEDS_WEIGHTS,
    REFUSALS,
    REFUSED,
    SCORERS,
    SUPPORTED,
    KVPressPolicy,
    _rotary_attached,
    press_label,
    press_table,
    ratio_for,
)

N_TOKENS = 300  # 300 * (1 - ratio) is a whole number for every ratio below: both sides agree on the ratio exactly
RATIOS = [0.25, 0.5, 0.75]


def _with_weights(press, lm):
    """A Hub-weight press with random weights already loaded, its loader switched off (no network here)."""
    config = lm.model.config
    layers, heads, kv_heads = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    generator = torch.Generator().manual_seed(5)
    if isinstance(press, kvpress.QFilterPress):
        press.q_filters = torch.randn(layers, kv_heads, head_dim, generator=generator)
    elif isinstance(press, kvpress.KVzapPress):
        torch.manual_seed(5)
        press.kvzap_model = KVzapModel(KVzapConfig(input_dim=config.hidden_size, output_dim=kv_heads,
                                                   n_modules=layers))
    else:
        press.mu = torch.randn(layers, heads, head_dim, generator=generator)
        spread = torch.randn(layers, heads, head_dim, head_dim, generator=generator)
        press.cov = spread @ spread.transpose(-1, -2) / head_dim
    press.post_init_from_model = lambda model: None
    return press


# Every runnable press, built for the test (wrappers get a scorer; Hub-weight presses random weights).
PRESSES = {
    "CriticalKVPress(SnapKVPress)": lambda lm: kvpress.CriticalKVPress(kvpress.SnapKVPress(window_size=32)),
    "CriticalKVPress(ExpectedAttentionPress)": lambda lm: kvpress.CriticalKVPress(
        kvpress.ExpectedAttentionPress(use_vnorm=False)),
    **{name: (lambda lm, name=name: getattr(kvpress, name)()) for name, info in SCORERS.items()
       if not info.weights and not info.wraps},
    **{name: (lambda lm, name=name: _with_weights(getattr(kvpress, name)(), lm)) for name, info in SCORERS.items()
       if info.weights},
}


@pytest.fixture(scope="module")
def prompt_ids():
    return torch.randint(0, 8000, (N_TOKENS,), generator=torch.Generator().manual_seed(7)).tolist()


def kvpress_compression(model, press, input_ids: list[int]) -> list[tuple[torch.Tensor, int]]:
    """Per layer, the press's own scores `[kv_heads, N]` and how many tokens its compression kept, from a real
    prefill under the press's forward hook (eager attention for presses that read the attention weights)."""
    recorded: dict[int, torch.Tensor] = {}
    original = press.score

    def recording(module, hidden_states, keys, values, attentions, kwargs):
        scores = original(module, hidden_states, keys, values, attentions, kwargs)
        recorded[module.layer_idx] = scores
        return scores

    press.score = recording  # the instance attribute shadows the method compress() calls
    eager = isinstance(press, kvpress.ObservedAttentionPress)
    cache = DynamicCache(config=model.config)
    if eager:
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), press(model):
            model(input_ids=torch.tensor([input_ids]), **cache_kwargs(model, cache), use_cache=True)
    finally:
        if eager:
            model.set_attn_implementation("sdpa")
    return [(recorded[i][0].float(), layer.keys.shape[2]) for i, layer in enumerate(cache.layers)]


def assert_same_kept(ours: torch.Tensor, scores: torch.Tensor, n_kept: int, where: str) -> None:
    """Our kept indices `[kv_heads, n_kept]` are kvpress's `scores.topk(n_kept)`; where the scores tie at the cut,
    any top-`n_kept` set of them (what both sides keep above the cut must agree, the rest ties at it)."""
    assert ours.shape == (scores.shape[0], n_kept), where
    theirs = scores.topk(n_kept, dim=-1).indices.sort(dim=-1).values
    if torch.equal(ours, theirs):
        return
    for head, row in enumerate(scores):
        cut = row.topk(n_kept).values[-1]
        tied = int((row == cut).sum())
        assert tied > 1, f"{where}, head {head}: kept sets differ without a tie at the cut"
        kept = set(ours[head].tolist())
        assert set((row > cut).nonzero().flatten().tolist()) <= kept, f"{where}, head {head}"
        assert bool((row[ours[head]] >= cut).all()), f"{where}, head {head}"


def test_every_supported_scorer_press_is_tested():
    runnable = {name for name, row in press_table().items() if row.status in (SUPPORTED, NEEDS_WEIGHTS)}
    tested = {name.split("(")[0] for name in PRESSES}
    assert tested == runnable


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("press_name", list(PRESSES))
def test_kept_sets_equal_kvpress(tiny_lm, prompt_ids, press_name, ratio):
    press = PRESSES[press_name](tiny_lm)
    n_kept = compute_n_kept(N_TOKENS, ratio)
    policy = make_policy("kvpress", press=press, budget=n_kept, sink=0, recent=0)  # our policy holds its own copy
    torch.manual_seed(11)  # presses that draw from torch's global RNG (Random, Leverage, Compactor) draw the same
    prepared = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(prompt_ids, []))
    trace = prepared.select(policy)
    press.compression_ratio = ratio  # kvpress's side: its own ratio (CriticalKVPress passes it to its scorer)
    torch.manual_seed(11)
    reference = kvpress_compression(tiny_lm.model, press, prompt_ids)
    assert prepared.prefills == 1
    for layer, (scores, kept) in zip(trace.layers, reference, strict=True):
        if isinstance(press, kvpress.PyramidKVPress):
            assert layer.budget == kept  # its own per-layer pyramid budgets
        else:
            assert kept == n_kept
        assert_same_kept(layer.kept, scores, kept, f"{press_name} at {ratio}, layer {layer.layer}")


def test_one_prefill_serves_every_budget_and_budget_aware_scores_are_keyed_by_budget(tiny_lm, prompt_ids):
    prepared = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(prompt_ids, []))
    for budget in (50, 150):
        prepared.select(make_policy("kvpress", press="SnapKVPress", window_size=32, budget=budget))
    assert len(prepared.scorers) == 1
    for budget in (50, 150):  # StreamingLLMPress sizes its window from the ratio: scored once per budget
        trace = prepared.select(make_policy("kvpress", press="StreamingLLMPress", budget=budget))
        assert trace.layers[0].kept[0].tolist() == list(range(4)) + list(range(N_TOKENS - budget + 4, N_TOKENS))
    assert len(prepared.scorers) == 3 and prepared.prefills == 1


def test_hidden_rows_that_were_not_kept_are_prefilled_again_only_when_the_press_reads_them(tiny_lm):
    ids = torch.randint(0, 8000, (600,), generator=torch.Generator().manual_seed(3)).tolist()
    full = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(ids, []))
    tail = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(ids, []), hidden_limit=1)  # keeps the last 512 rows
    assert tail.layers[0].hidden_offset == 88
    for press, prefills in (("SnapKVPress", 1), ("TOVAPress", 1), ("KnormPress", 1), ("ExpectedAttentionPress", 2)):
        policy = make_policy("kvpress", press=press, budget=200)
        assert torch.equal(tail.select(policy).layers[1].kept, full.select(policy).layers[1].kept), press
        assert tail.prefills == prefills, press


def test_rotary_embedding_is_built_for_the_call_and_removed(tiny_lm):
    lm = kvcrush.load_model("random:tiny", device="cpu")  # kvpress's hook has not touched this one
    module = lm.model.model.layers[0].self_attn
    assert not hasattr(module, "rotary_emb")
    ids = torch.randint(0, 8000, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    prepared = kvcrush.prepare_encoded(lm, EncodedPrompt(ids, []))
    policy = make_policy("kvpress", press="ExpectedAttentionPress", budget=50)
    built = policy.score(prepared.layers[0])
    assert not hasattr(module, "rotary_emb") and "rotary_emb" not in dict(module.named_children())
    module.rotary_emb = lm.model.model.rotary_emb  # what kvpress assigns
    try:
        assert torch.allclose(built, policy.score(prepared.layers[0]), rtol=1e-5, atol=1e-7)
    finally:
        del module.rotary_emb
    with _rotary_attached(module, torch.device("cpu")):
        assert hasattr(module, "rotary_emb")


def test_press_table_covers_every_export_and_agrees_with_the_classes():
    table = press_table()
    assert list(table) == list(kvpress.__all__)
    for name, row in table.items():
        assert row.status in (SUPPORTED, NEEDS_WEIGHTS, REFUSED) and row.reason, name
        assert name in SCORERS or name in REFUSALS, f"{name} is in neither hand-kept table"
        if name in SCORERS:
            assert row.kind == "scorer" and issubclass(getattr(kvpress, name), kvpress.ScorerPress), name
    assert table["ExpectedAttentionPress"].status == SUPPORTED
    assert table["KVzipPress"].reason.startswith("not yet supported: needs its own forward passes")
    assert table["ThinKPress"].status == REFUSED and table["QFilterPress"].status == NEEDS_WEIGHTS


@pytest.mark.parametrize("name", [n for n, info in SCORERS.items() if info.weights] + list(REFUSALS))
def test_presses_that_cannot_run_are_refused_with_their_reason(name):
    reason = press_table()[name].reason
    with pytest.raises(PolicyError, match=re.escape(reason)):
        make_policy("kvpress", press=name)


def test_press_names_classes_instances_and_options():
    by_name = make_policy("kvpress", press="snapkv", window_size=32, budget=0.5)
    assert isinstance(by_name, KVPressPolicy) and by_name.press.window_size == 32
    assert by_name.describe()["press"] == "SnapKVPress(window_size=32, kernel_size=5)"
    by_class = make_policy("kvpress", press=kvpress.SnapKVPress, window_size=32, budget=0.5)
    assert by_class.scorer_key() == by_name.scorer_key() and by_class.describe() == by_name.describe()
    instance = kvpress.SnapKVPress(window_size=32, compression_ratio=0.9)
    policy = make_policy("kvpress", press=instance, budget=0.5)
    assert policy.press is not instance and policy.scorer_key() == by_name.scorer_key()
    wrapped = make_policy("kvpress", press="CriticalKVPress(ExpectedAttentionPress)")
    assert press_label(wrapped.press).startswith("CriticalKVPress(press=ExpectedAttentionPress(")
    for bad, match in [
        ({}, "needs a press"),
        ({"press": "NoSuchPress"}, "Unknown kvpress press"),
        ({"press": "CriticalKVPress"}, "wraps another scorer press"),
        ({"press": "snapkv", "window": 8}, "does not take window"),
        ({"press": instance, "window_size": 8}, "set them on the SnapKVPress instance"),
        ({"press": "knorm", "decode_interval": 16}, "does not evict while decoding"),
        ({"press": kvpress.AdaKVPress(kvpress.KnormPress())}, "head-wise adaptive budgets"),
        ({"press": kvpress.CriticalKVPress(kvpress.QFilterPress())}, "Q-filters"),
        ({"press": 3}, "needs a kvpress ScorerPress"),
    ]:
        with pytest.raises(PolicyError, match=match):
            make_policy("kvpress", **bad)


def test_a_scorer_press_of_ones_own_is_read_conservatively(tiny_lm, prompt_ids):
    class Middle(kvpress.ScorerPress):
        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            n = keys.shape[2]
            return -(torch.arange(n) - n / 2).abs().expand(keys.shape[0], keys.shape[1], n)

    policy = make_policy("kvpress", press=Middle(), budget=100)
    assert policy.info.reads == "all" and policy.info.budget_scores
    trace = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(prompt_ids, [])).select(policy)
    assert trace.layers[0].kept[0].tolist() == list(range(100, 200))


def test_ratio_for_keeps_exactly_the_budget():
    for n in (7, 100, 300, 1001, 4096):
        for kept in range(1, n + 1, max(1, n // 37)):
            assert compute_n_kept(n, ratio_for(n, kept)) == kept
    assert ratio_for(10, 10) == 0.0 and ratio_for(10, 12) == 0.0


def test_cli_form_parses_and_reaches_make_policy():
    args = build_parser().parse_args(["generate", "--prompt", "x", "--policy", "kvpress", "--press",
                                      "ExpectedAttentionPress", "--budget", "0.5"])
    assert policy_options(args) == {"press": "ExpectedAttentionPress"}
    policy = make_policy(args.policy, budget=args.budget, **policy_options(args))
    assert isinstance(policy.press, kvpress.ExpectedAttentionPress)
    stray = build_parser().parse_args(["generate", "--prompt", "x", "--policy", "snapkv", "--press", "KnormPress"])
    with pytest.raises(PolicyError, match="--press applies to --policy kvpress only"):
        policy_options(stray)


def test_cli_runs_a_press_end_to_end():
    command = [sys.executable, "-m", "kvcrush", "generate", "--model", "random:tiny", "--prompt",
               "Tell me a story about a cat. " * 20, "--policy", "kvpress", "--press", "KnormPress", "--budget", "0.5",
               "--max-new-tokens", "1", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["trace"]["policy"]["name"] == "kvpress" and data["trace"]["policy"]["press"] == "KnormPress()"
    missing = subprocess.run(command[:-9] + ["--policy", "kvpress", "--max-new-tokens", "1"], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "needs a press" in missing.stderr and "Traceback" not in missing.stderr
