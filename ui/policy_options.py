"""Which options a policy offers, read from the policy's own declarations (no policy is named here).

`kvcrush.declared_options(cls)` lists what a policy class declares (name, type, default, range,
help). A policy with a `base` field (KVCrush) is a composite: its own options, then its base's,
routed the way `kvcrush.make_policy` routes them: sink and recent (declared by the `kvcrush.Policy`
base class) belong to the base; every other option the composite declares, `decode_interval` included,
is its own. Adding a policy file and its
registry line is enough for the sidebar, the cache keys and the labels to follow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import kvcrush
from kvcrush.policies.options import OptionSpec

Options = tuple[tuple[str, Any], ...]  # sorted (name, value) pairs: hashable, one spelling per setting
# Shared options `kvcrush.make_policy` hands to a composite policy's base (the others stay with the composite).
BASE_ROUTED = frozenset({"sink", "recent"})


@dataclass(frozen=True)
class OptionGroup:
    """Options one policy class declares, as a form section. `owner` names the widget keys."""

    owner: str
    title: str
    help: str
    specs: tuple[OptionSpec, ...]


def policy_class(name: str) -> type[kvcrush.Policy]:
    return kvcrush.POLICIES[name]


@cache
def default_base(name: str) -> str | None:
    """The base policy a composite policy uses by default (None: the policy has no base)."""
    for item in dataclasses.fields(policy_class(name)):
        if item.name == "base" and item.default_factory is not dataclasses.MISSING:
            return item.default_factory().name
    return None


def has_base(name: str) -> bool:
    return default_base(name) is not None


def base_choices() -> tuple[str, ...]:
    return tuple(kvcrush.BASE_CHOICES)


@cache
def groups(name: str, base: str | None = None) -> tuple[OptionGroup, ...]:
    """The form sections of `name` (with `base` for a composite policy), in declaration order."""
    cls = policy_class(name)
    specs = tuple(kvcrush.declared_options(cls))
    if not has_base(name):
        return (OptionGroup(name, f"{name} options", cls.help, specs),)
    shared = {spec.name for spec in kvcrush.declared_options(kvcrush.Policy)} & BASE_ROUTED
    own = tuple(spec for spec in specs if spec.name not in shared)
    owned = {spec.name for spec in own}
    base_name = base or default_base(name)
    base_cls = policy_class(base_name)
    base_specs = tuple(spec for spec in kvcrush.declared_options(base_cls) if spec.name not in owned)
    return (OptionGroup(name, f"{name} options", cls.help, own),
            OptionGroup(base_name, f"Base policy: {base_name}", base_cls.help, base_specs))


def specs(name: str, base: str | None = None) -> dict[str, OptionSpec]:
    """Every option of the policy (and its base), by name."""
    return {spec.name: spec for group in groups(name, base) for spec in group.specs}


def cast(spec: OptionSpec, value: Any) -> Any:
    """A widget's value as the declared type (number inputs hand back floats for ints and vice versa)."""
    if value is None or (spec.optional and value == ""):
        return None
    if spec.kind is bool:
        return bool(value)
    if spec.kind is int:
        return int(round(float(value)))
    if spec.kind is float:
        number = float(value)
        return round(number, 10) if math.isfinite(number) else number  # 0.1 + 0.2 and 0.3 share a key
    return spec.kind(value)


def normalize(name: str, base: str | None, options: Mapping[str, Any]) -> Options:
    """Only what the policy declares, cast to the declared type, defaults left out, sorted by name.

    Equal runs then share one cache key, whatever widgets or page produced them.
    """
    declared = specs(name, base)
    kept = {}
    for key, value in options.items():
        spec = declared.get(key)
        if spec is None:
            continue
        value = cast(spec, value)
        if value is None and not spec.optional:
            continue  # "not set" where the policy has no "decide yourself": its default applies
        if value != spec.default:
            kept[key] = value
    return tuple(sorted(kept.items()))

