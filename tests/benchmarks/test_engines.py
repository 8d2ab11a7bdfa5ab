"""The benchmark's engine driver on the real tiny model (no mocks): one prefill per item for all of our
policies and budgets, and one decoding loop for both engines."""

from __future__ import annotations

import math

import pytest
import torch

import benchmarks.kvpress_runner as kvpress_runner
from benchmarks.engines import ItemRuns, equal_bytes_budget, kvcrush_overhead, run_kvpress
from benchmarks.grid import parse_policies, parse_spec
from benchmarks.quality import run_grid
from benchmarks.tasks import Item
from kvcrush import decoding, kvcache
from kvcrush.prompts import EncodedPrompt

N_CONTEXT = 240
N_QUESTION = 9


@pytest.fixture(scope="module")
def ids() -> list[int]:
    generator = torch.Generator().manual_seed(11)
    return torch.randint(3, 8000, (N_CONTEXT + N_QUESTION + 16,), generator=generator).tolist()


def _item(ids: list[int], reference: bool = False) -> Item:
    context, question = ids[:N_CONTEXT], ids[N_CONTEXT : N_CONTEXT + N_QUESTION]
    if reference:
        return Item("likelihood", "test", N_CONTEXT, "ref", EncodedPrompt(context, []),
                    reference_ids=ids[N_CONTEXT + N_QUESTION :])
    return Item("agreement", "test", N_CONTEXT, "dec", EncodedPrompt(context, question), answers=("1234567",),
                max_new_tokens=6)


class ForwardLengths:
    """Records the number of input tokens of every forward of the model (a pre-hook on the real module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(int(ids.shape[-1]))

    def over(self, n_tokens: int) -> list[int]:
        return [n for n in self.lengths if n > n_tokens]

    def __enter__(self) -> ForwardLengths:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_one_item_is_prefilled_once_for_every_policy_and_budget(tiny_lm, ids):
    item = _item(ids)
    specs = parse_policies(["snapkv", "h2o", "tova", "streaming", "knorm", "pyramidkv", "snapkv@all",
                            "kvcrush:snapkv:alternating", "kvcrush:h2o:mean"])
    with ForwardLengths(tiny_lm.model) as forwards:
        grid = run_grid(tiny_lm, [item], specs, [0.25, 0.5], seed=0, show_progress=False, parity=False)
    assert grid.errors == []
    assert len(grid.records) == 1 + len(specs) * 2
    # more than the question's tokens: only prefills (the question, decoding steps are shorter)
    assert forwards.over(N_QUESTION) == [N_CONTEXT]
    ours = [r for r in grid.records if r["policy"] != "full"]
    assert all(r["prefill_reused"] for r in ours)
    by_label = {(r["policy"], r["budget"]): r for r in grid.records}
    # KVCrush over SnapKV reused SnapKV's scores, and reports what they cost when computed
    assert by_label[("kvcrush:snapkv:alternating", 0.25)]["score_reused"]
    assert by_label[("kvcrush:snapkv:alternating", 0.25)]["score_s"] == by_label[("snapkv", 0.25)]["score_s"]


def test_query_aware_specs_add_exactly_one_prefill(tiny_lm, ids):
    item = _item(ids)
    runs = ItemRuns(tiny_lm, item)
    with ForwardLengths(tiny_lm.model) as forwards:
        runs.full()
        for label in ("snapkv", "kvcrush", "snapkv+qa", "kvcrush:snapkv:alternating+qa"):
            for budget in (0.25, 0.5):
                runs.run(parse_spec(label), budget)
    assert sorted(forwards.over(N_QUESTION)) == [N_CONTEXT, N_CONTEXT + N_QUESTION]
    assert runs.prefills == 2
    runs.close()


def test_kvpress_and_our_engine_decode_through_the_same_loop(tiny_lm, ids):
    """Without compression (full / ratio 0) both engines give the same tokens and the same NLL."""
    press = parse_spec("kvpress:knorm")
    answer = _item(ids)
    ours, theirs = ItemRuns(tiny_lm, answer).full(), run_kvpress(tiny_lm, press, 1.0, answer)
    assert len(ours.new_token_ids) == answer.max_new_tokens
    assert theirs.new_token_ids == ours.new_token_ids and theirs.text == ours.text
    assert theirs.kv_bytes_before == ours.kv_bytes_before == theirs.kv_bytes_after == ours.kv_bytes_after
    scored = _item(ids, reference=True)
    ours, theirs = ItemRuns(tiny_lm, scored).full(), run_kvpress(tiny_lm, press, 1.0, scored)
    assert ours.nll is not None and math.isfinite(ours.nll)
    assert theirs.nll == ours.nll
    for gone in ("_greedy_decode", "_continuation_nll", "_positions", "_eos_ids", "uncompressed_cache_bytes",
                 "_synchronize", "kv_fraction"):
        assert not hasattr(kvpress_runner, gone), gone
    assert kvpress_runner.cache_bytes is kvcache.cache_bytes  # one byte counter
    assert kvpress_runner.score_reference is decoding.score_reference

def test_kvcrush_overhead_is_policy_time_minus_its_base_on_the_same_scores(tiny_lm, ids):
    item = _item(ids)
    runs = ItemRuns(tiny_lm, item)
    spec = parse_spec("kvcrush:snapkv:alternating")
    outcome = runs.run(spec, 0.25)
    base = runs.run_base(spec, 0.25)
    assert base.score_reused and base.score_s == outcome.score_s and base.decode_tokens == 0
    overhead = kvcrush_overhead(outcome, base)
    assert overhead["overhead_s"] == pytest.approx(outcome.select_s - base.select_s)
    assert overhead["overhead_pct"] == pytest.approx(100 * overhead["overhead_s"] / outcome.e2e_s)
    assert outcome.e2e_s == pytest.approx(outcome.prefill_s + outcome.score_s + outcome.select_s + outcome.decode_s)
    assert runs.prefills == 1
    with pytest.raises(ValueError):
        runs.run_base(parse_spec("snapkv"), 0.25)


@pytest.mark.parametrize("reference", [False, True], ids=["decoded", "scored-in-batches"])
def test_quantized_runs_report_their_real_bytes(tiny_lm, ids, reference):
    """At one budget fraction: 4-bit rows at the same tokens hold fewer bytes than 16-bit ones; 4-bit rows at
    the same bytes hold no more bytes and keep more tokens (both the decoding and the batched scoring path)."""
    item = _item(ids, reference=reference)
    budget = 0.1
    specs = parse_policies(["snapkv", "snapkv~4", "snapkv~4b", "kvcrush:snapkv:alternating~4b"])
    grid = run_grid(tiny_lm, [item], specs, [budget], seed=0, show_progress=False, parity=False)
    assert grid.errors == []
    rows = {r["policy"]: r for r in grid.records}
    full, plain, tokens, same = rows["full"], rows["snapkv"], rows["snapkv~4"], rows["snapkv~4b"]
    assert (full["kv_bits"], plain["kv_bits"], tokens["kv_bits"], same["kv_bits"]) == (16, 16, 4, 4)
    assert (plain["equal_bytes"], tokens["equal_bytes"], same["equal_bytes"]) == (False, False, True)
    assert plain["kept_tokens"] == tokens["kept_tokens"] == math.ceil(budget * N_CONTEXT)
    # Per KV head and layer: the 8 newest rows stay float32 (2 x 16 values x 4 bytes), the others are 16 4-bit
    # codes (8 bytes) plus a float16 scale and zero point (the tiny model's head dim, 16, is one group).
    layers, kv_heads = tiny_lm.model.config.num_hidden_layers, tiny_lm.model.config.num_key_value_heads
    kept = plain["kept_tokens"]
    assert plain["kv_bytes_after"] == layers * kv_heads * kept * 128
    assert tokens["kv_bytes_after"] == layers * kv_heads * ((kept - 8) * 2 * (8 + 4) + 8 * 128)
    assert same["kv_bytes_after"] <= plain["kv_bytes_after"]
    assert same["kept_tokens"] > 2 * plain["kept_tokens"]
    # budget_bytes is a tenth of the full-precision cache per KV head and layer, and the cache holds no more
    assert same["budget_bytes"] == math.floor(budget * full["kv_bytes_before"] / (layers * kv_heads))
    assert same["kv_bytes_after"] <= same["budget_bytes"] * layers * kv_heads
    crush = rows["kvcrush:snapkv:alternating~4b"]
    assert crush["budget_bytes"] == same["budget_bytes"] and crush["kv_bytes_after"] <= plain["kv_bytes_after"]
    assert (crush["representative_bits"], plain["representative_bits"]) == (4, None)
    assert all(math.isfinite(r["score"]) for r in grid.records)


def test_equal_bytes_budget_is_the_full_precision_share_of_the_prompt(tiny_lm, ids):
    runs = ItemRuns(tiny_lm, _item(ids))
    prepared = runs.prepared()
    head_dim = tiny_lm.model.config.hidden_size // tiny_lm.model.config.num_attention_heads
    full_token = 2 * head_dim * 4  # key + value rows in float32
    assert equal_bytes_budget(prepared, 0.1) == math.floor(0.1 * N_CONTEXT * full_token)
    assert equal_bytes_budget(prepared, 0.25) == N_CONTEXT * full_token // 4
    policy = runs.policy(parse_spec("snapkv~8b"), 0.25)
    assert (policy.kv_bits, policy.budget_bytes) == (8, N_CONTEXT * full_token // 4)
    assert runs.policy(parse_spec("snapkv~8"), 0.25).budget_bytes is None
    runs.close()
