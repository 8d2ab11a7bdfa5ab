"""Eviction policies, one per file, and `make_policy` to build any of them from strings."""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

from kvcrush.budget import parse_budget
from kvcrush.errors import PolicyError
from kvcrush.policies.base import Policy
from kvcrush.policies.full import FullCache
from kvcrush.policies.h2o import H2O
from kvcrush.policies.keydiff import KeyDiff
from kvcrush.policies.knorm import KeyNorm
from kvcrush.policies.kvcrush import KVCrush
from kvcrush.policies.pyramidkv import PyramidKV
from kvcrush.policies.random import RandomEviction
from kvcrush.policies.snapkv import SnapKV
from kvcrush.policies.streaming import StreamingLLM
from kvcrush.policies.tova import TOVA

BASELINES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (FullCache, RandomEviction, StreamingLLM, H2O, SnapKV, PyramidKV, TOVA, KeyNorm, KeyDiff)
}
POLICIES: dict[str, type[Policy]] = {**BASELINES, KVCrush.name: KVCrush}
BASE_CHOICES = tuple(name for name in BASELINES if name != "full")
# Any kvpress ScorerPress as a policy (`kvcrush.policies.press`): built by `make_policy("kvpress", press=...)`, and
# kept out of `POLICIES` (whose every entry builds with its defaults and runs without kvpress installed).
KVPRESS_POLICY = "kvpress"
# What `make_policy("kvcrush", base=NAME)` accepts by name: the baselines, and "kvpress" (with `press=`).
KVCRUSH_BASES = (*BASE_CHOICES, KVPRESS_POLICY)


def _option_names(cls: type[Policy]) -> set[str]:
    return {f.name for f in fields(cls)}


def make_policy(name: str, budget: float | int | str = 0.25, **options: Any) -> Policy:
    """Build a policy from strings, as the CLI and the app do.

    `make_policy("kvcrush", budget=0.25, base="snapkv", crush_fraction=0.25, anchor="alternating",
    granularity="token")`. For `kvcrush`, options the base policy understands (window, sink, ...)
    go to the base; the rest go to KVCrush. `base` may also be "kvpress" (with `press=`; the press's options go to
    the base too), a kvpress press instance or class, or a Policy instance (copied). Over a press, signatures are over
    KV heads and a budget-aware press follows KVCrush's split (`kvcrush.policies.press`).
    `make_policy("kvpress", press="ExpectedAttentionPress")`: a kvpress
    ScorerPress (name, class or instance) as a policy; options it does not declare go to the press's
    constructor (`kvcrush.policies.press`). Unknown names and options raise `PolicyError`.
    """
    key = str(name).strip().lower()
    if key not in POLICIES and key != KVPRESS_POLICY:
        raise PolicyError(f"Unknown policy {name!r}; choose one of {', '.join([*POLICIES, KVPRESS_POLICY])}.")
    budget_value = parse_budget(budget)
    options = {k: v for k, v in options.items() if v is not None}
    if key == KVPRESS_POLICY:
        from kvcrush.policies.press import make_press_policy  # imports kvpress only when asked for

        return make_press_policy(budget_value, options)
    if key != KVCrush.name:
        return _build(POLICIES[key], budget_value, options)

    base_spec = options.pop("base", "snapkv")
    crush_options = _option_names(KVCrush) - {"base", "sink", "recent", "budget"}
    base_options = {k: v for k, v in options.items() if k not in crush_options}
    own_options = {k: v for k, v in options.items() if k in crush_options}
    base = _kvcrush_base(base_spec, budget_value, base_options, own_options)
    return _build(KVCrush, budget_value, {**own_options, "base": base})


def _kvcrush_base(spec: Any, budget: float | int, options: dict[str, Any], crush_options: dict[str, Any]) -> Policy:
    """KVCrush's base from `base=`: a baseline's name, "kvpress" (with `press=`), a Policy instance (copied: KVCrush
    sets its budget), or a kvpress press (instance or class; `kvcrush.policies.press`). `options` are the base's."""
    if isinstance(spec, Policy):
        if options:
            raise PolicyError(f"Options {', '.join(sorted(options))} are for the base policy: set them on the "
                              f"{spec.name} instance passed as base instead.")
        return copy.deepcopy(spec)
    if not isinstance(spec, str):
        if not _is_press(spec):
            raise PolicyError(f"Unknown base policy {spec!r} for kvcrush: give a name ({', '.join(KVCRUSH_BASES)}), a "
                              "kvcrush Policy, or a kvpress ScorerPress.")
        options = {**options, "press": spec}
        spec = KVPRESS_POLICY
    base_name = spec.strip().lower()
    if base_name == KVPRESS_POLICY:
        if crush_options.get("decode_interval"):
            from kvcrush.policies.press import DECODING

            raise PolicyError(f"KVCrush over a press: {DECODING}")
        return make_policy(KVPRESS_POLICY, budget, **options)
    if base_name not in BASE_CHOICES:
        raise PolicyError(f"Unknown base policy {base_name!r} for kvcrush; choose one of {', '.join(KVCRUSH_BASES)}.")
    return _build(BASELINES[base_name], budget, options)


def _is_press(value: Any) -> bool:
    """A kvpress press instance or class (kvpress is imported only when it is usable and `value` is not a name)."""
    from kvcrush.integrations import kvpress_problem

    if kvpress_problem() is not None:
        return False
    from kvpress.presses.base_press import BasePress

    return isinstance(value, BasePress) or (isinstance(value, type) and issubclass(value, BasePress))


def _build(cls: type[Policy], budget: float | int, options: dict[str, Any]) -> Policy:
    unknown = set(options) - _option_names(cls)
    if unknown:
        allowed = sorted(_option_names(cls) - {"budget"})
        raise PolicyError(f"{cls.name} does not take {', '.join(sorted(unknown))}; options: {', '.join(allowed)}.")
    try:
        return cls(budget=budget, **options)
    except TypeError as error:
        raise PolicyError(f"Bad options for {cls.name}: {error}") from None


__all__ = [
    "Policy", "FullCache", "RandomEviction", "StreamingLLM", "H2O", "SnapKV", "PyramidKV", "TOVA",
    "KeyNorm", "KeyDiff", "KVCrush", "BASELINES", "POLICIES", "BASE_CHOICES", "KVPRESS_POLICY", "KVCRUSH_BASES",
    "make_policy",
]
