"""Every policy declares itself once (help, colour, options, scorer, scoring rows); consumers read that."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

import kvcrush
from kvcrush import limits
from kvcrush.cli import build_parser, policy_options
from kvcrush.policies import POLICIES, make_policy
from kvcrush.policies.base import Policy
from kvcrush.policies.options import declared_options, option


@pytest.mark.parametrize("name", list(POLICIES))
def test_each_policy_declares_help_colour_and_consistent_options(name):
    cls = POLICIES[name]
    assert cls.help and re.fullmatch(r"#[0-9A-Fa-f]{6}", cls.color)
    policy = make_policy(name)
    for spec in declared_options(cls):
        assert spec.help, spec.name
        value = getattr(policy, spec.name)
        if name != "kvcrush" or spec.name not in ("sink", "recent"):  # KVCrush takes those from its base
            assert value == spec.default, spec.name
        if spec.choices is not None:
            assert spec.default in spec.choices
        if spec.minimum is not None and spec.default is not None:
            assert spec.minimum <= spec.default <= spec.maximum
    hash(policy.scorer_key())


def test_colours_tell_policies_apart():
    colours = [cls.color.lower() for cls in POLICIES.values()]
    assert len(set(colours)) == len(colours)


def test_scorer_keys_say_which_scores_are_shared():
    assert make_policy("pyramidkv").scorer_key() == make_policy("snapkv").scorer_key()
    assert make_policy("kvcrush", base="h2o").scorer_key() == make_policy("h2o").scorer_key()
    assert make_policy("snapkv", head_reduction="all").scorer_key() == make_policy("snapkv").scorer_key()
    assert make_policy("snapkv", kernel=7).scorer_key() != make_policy("snapkv").scorer_key()
    assert make_policy("random", seed=1).scorer_key() != make_policy("random", seed=2).scorer_key()


@dataclass
class Middle(Policy):
    """A policy written for this test only: prefers tokens near the middle of the prompt."""

    name = "middle"
    help = "Keeps the tokens closest to the middle of the prompt."
    color = "#123456"
    spread: float = option(0.5, "How far from the middle still counts.", minimum=0.0, maximum=1.0, step=0.1)

    def score(self, layer):
        positions = torch.arange(layer.n_context, dtype=torch.float32)
        return -(positions - layer.n_context * self.spread).abs().expand(layer.kv_heads, -1).clone()

    def scoring_rows(self, n_tokens: int) -> int:
        return 7

    def query_rows(self, layer):
        return layer.n_context, layer.n_context


def test_a_new_policy_file_plus_one_registry_line_reaches_every_consumer(tiny_lm, monkeypatch):
    monkeypatch.setitem(POLICIES, "middle", Middle)  # the one registry line
    policy = make_policy("middle", budget=0.5, spread=0.25)
    assert policy.spread == 0.25
    args = build_parser().parse_args(["generate", "--prompt", "x", "--policy", "middle", "--spread", "0.3"])
    assert policy_options(args) == {"spread": 0.3}
    estimate = limits.estimate_run_memory(tiny_lm, 1000, 1, policy)
    assert estimate.scoring >= limits.SCORE_COPIES * tiny_lm.query_heads * 7 * 1000 * 4
    prepared = kvcrush.prepare(tiny_lm, "one two three four five six seven eight nine ten " * 10)
    trace = prepared.select(policy)
    assert trace.layers[0].kept.shape[1] == -(-prepared.n_budgeted // 2)


def test_kvpress_counterparts_come_from_the_declarations():
    from benchmarks.grid import PARITY_PAIRS
    from tests.conftest import kvpress_or_skip

    presses = kvpress_or_skip("benchmarks.kvpress_runner").KVPRESS_PRESSES
    from benchmarks.report import KVPRESS_COUNTERPART

    declared = {name: cls.kvpress_press for name, cls in POLICIES.items() if cls.kvpress_press}
    assert declared["snapkv"] == "snapkv" and declared["h2o"] == "observed_attention"
    assert set(declared.values()) <= set(presses)
    assert KVPRESS_COUNTERPART == {name: f"kvpress:{press}" for name, press in declared.items()}
    assert {press: ours[0] for press, ours in PARITY_PAIRS.items()} == {f"kvpress:{p}": n for n, p in declared.items()}
