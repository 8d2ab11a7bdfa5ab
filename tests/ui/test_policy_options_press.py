"""The kvpress policy in the sidebar's option model (`ui.policy_options`): offered where kvpress can be used, alone and
as KVCrush's base, its press a choice among `runnable_presses()` whose help is `press_table()`'s descriptions."""

from __future__ import annotations

import dataclasses

from tests.conftest import kvpress_or_skip

kvpress_or_skip()

from kvcrush.policies.press import KVPressPolicy, press_table, runnable_presses  # noqa: E402
from ui import policy_options  # noqa: E402
from ui.state import PolicyConfig  # noqa: E402


def test_kvpress_is_offered_as_a_policy_and_as_a_base():
    assert policy_options.policy_names()[-1] == "kvpress" and "kvpress" in policy_options.base_choices()
    assert policy_options.policy_class("kvpress") is KVPressPolicy and not policy_options.has_base("kvpress")


def test_press_option_lists_the_runnable_presses_with_their_descriptions():
    (group,) = policy_options.groups("kvpress")
    press = policy_options.specs("kvpress")["press"]
    assert press.choices[0] == "ExpectedAttentionPress" and set(press.choices) == set(runnable_presses())
    assert press_table()["TOVAPress"].reason in press.help and policy_options.needs_choice(group)
    own, base = policy_options.groups("kvcrush", "kvpress")
    assert base.title == "Base policy: kvpress" and "press" in {s.name for s in base.specs}
    assert "press" not in {s.name for s in own.specs} and policy_options.needs_choice(base)
    assert not policy_options.needs_choice(policy_options.groups("snapkv")[0])


def test_configs_build_the_press_policy_and_kvcrush_over_it():
    config = PolicyConfig(name="kvpress", budget=0.3, options=(("press", "TOVAPress"), ("window", 8))).normalized()
    assert config.options == (("press", "TOVAPress"),)  # options kvpress does not declare are dropped
    assert type(config.build().press).__name__ == "TOVAPress"
    crush = dataclasses.replace(config, name="kvcrush", base="kvpress").normalized()
    policy = crush.build()
    assert policy.base.name == "kvpress" and type(policy.base.press).__name__ == "TOVAPress"
    assert crush.label == "kvcrush (kvpress)" and crush.settings_text == "press=TOVAPress"
    assert config.with_name("snapkv").options == ()
