"""Which options a policy offers, read from the policy's own declarations (no policy is named here).

`kvcrush.declared_options(cls)` lists what a policy class declares (name, type, default, range,
help). A policy with a `base` field (KVCrush) is a composite: its own options, then its base's,
routed the way `kvcrush.make_policy` routes them: sink and recent (declared by the `kvcrush.Policy`
base class) belong to the base; every other option the composite declares, `decode_interval` included,
is its own. Adding a policy file and its
registry line is enough for the sidebar, the cache keys and the labels to follow. The `kvpress` policy (any kvpress
scorer press, `kvcrush.policies.press`) is offered too, alone and as a base, where kvpress can be used; its `press`
option's choices (the runnable presses) are known only at run time (`declared`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import kvcrush
from kvcrush.policies import KVPRESS_POLICY
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


@cache
def kvpress_usable() -> bool:
    """Whether kvpress is installed and accepts the installed transformers (package metadata only: no import)."""
    from kvcrush.integrations import kvpress_problem

    return kvpress_problem() is None


def policy_names() -> tuple[str, ...]:
    """Every policy the explorer offers: `kvcrush.POLICIES`, and `kvpress` (any kvpress scorer press) where kvpress
    can be used (`kvcrush.policies.press`; it is kept out of POLICIES because it cannot build with defaults)."""
    return (*kvcrush.POLICIES, *((KVPRESS_POLICY,) if kvpress_usable() else ()))


def policy_class(name: str) -> type[kvcrush.Policy]:
    if name == KVPRESS_POLICY:
        from kvcrush.policies.press import KVPressPolicy  # imports kvpress only when a press is resolved

        return KVPressPolicy
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
    """Bases a composite policy offers: the baselines, and `kvpress` (a press's scores) where kvpress can be used."""
    return (*kvcrush.BASE_CHOICES, *((KVPRESS_POLICY,) if kvpress_usable() else ()))


def declared(cls: type[kvcrush.Policy]) -> tuple[OptionSpec, ...]:
    """`kvcrush.declared_options(cls)`, with the choices a class knows only at run time filled in (a classmethod
    `option_choices(name) -> (choices, help) | None`: the kvpress policy's runnable presses)."""
    offered = getattr(cls, "option_choices", None)
    specs = []
    for spec in kvcrush.declared_options(cls):
        found = offered(spec.name) if offered is not None else None
        if found is not None:
            choices, help_text = found
            spec = dataclasses.replace(spec, choices=tuple(choices), help=help_text)
        specs.append(spec)
    return tuple(specs)


def needs_choice(group: OptionGroup) -> bool:
    """Whether the group has an option the user must pick (choices but no default: the kvpress policy's press), so a
    form shows it unfolded."""
    return any(spec.choices and spec.default is None for spec in group.specs)


@cache
def groups(name: str, base: str | None = None) -> tuple[OptionGroup, ...]:
    """The form sections of `name` (with `base` for a composite policy), in declaration order."""
    cls = policy_class(name)
    specs = declared(cls)
    if not has_base(name):
        return (OptionGroup(name, f"{name} options", cls.help, specs),)
    shared = {spec.name for spec in kvcrush.declared_options(kvcrush.Policy)} & BASE_ROUTED
    own = tuple(spec for spec in specs if spec.name not in shared)
    owned = {spec.name for spec in own}
    base_name = base or default_base(name)
    base_cls = policy_class(base_name)
    base_specs = tuple(spec for spec in declared(base_cls) if spec.name not in owned)
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

