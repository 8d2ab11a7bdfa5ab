"""Which policies and kvpress presses run, and at which budgets.

A policy is named by a short spec string, which is also its label in every table and CSV:

- ``snapkv``, ``h2o``, ``streaming``, ``pyramidkv``, ``tova``, ``knorm``, ``random``: our baselines with
  their defaults (SnapKV/PyramidKV window ``--window``, default 32, max pooling).
- ``snapkv-avg``: our SnapKV with average pooling, which is what kvpress's SnapKVPress does;
  ``tova-all``: our TOVA averaging all query heads of a layer (kvpress's TOVAPress) instead of per
  GQA group. These two exist to explain gaps between the engines.
- ``kvcrush:BASE:ANCHOR``: KVCrush over one of our baselines with that anchor
  (``random|zeros|ones|mean|alternating``) and ``--crush-fraction`` (default 0.25).
- ``kvpress:PRESS``: NVIDIA kvpress's press (``snapkv``, ``streaming``, ``knorm``, ``tova``,
  ``observed_attention``, ``expected_attention``, ``keydiff``) at compression ratio ``1 - budget``.
- A ``+qa`` suffix on one of ours (``snapkv+qa``, ``kvcrush:snapkv:alternating+qa``) runs it query-aware:
  the question is the observation window and is kept (inside the budget). kvpress has no such mode, so
  these rows are a secondary setting beside the primary, query-agnostic one.

Groups expand to several specs: ``baselines``, ``matched``, ``kvcrush`` (both bases, five anchors),
``kvcrush-snapkv``, ``kvcrush-h2o``, ``kvpress``, ``query-aware``, ``all``. ``full`` (no eviction) is always run once
per sample as the reference and need not be listed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kvcrush import make_policy
from kvcrush.crush import ANCHOR_MODES
from kvcrush.policies import BASE_CHOICES, Policy

OUR_BASELINES = ("streaming", "h2o", "snapkv", "pyramidkv", "tova", "knorm", "random")
MATCHED = ("snapkv-avg", "tova-all")
KVPRESS_NAMES = ("snapkv", "streaming", "knorm", "tova", "observed_attention", "expected_attention", "keydiff")
KVCRUSH_BASES = ("snapkv", "h2o")

ENGINE_OURS = "ours"
ENGINE_KVPRESS = "kvpress"

# Which of our policies each kvpress press should agree with (same idea, same inputs).
PARITY_PAIRS: dict[str, tuple[str, ...]] = {
    "kvpress:snapkv": ("snapkv", "snapkv-avg"),
    "kvpress:streaming": ("streaming",),
    "kvpress:knorm": ("knorm",),
    "kvpress:tova": ("tova", "tova-all"),
    "kvpress:observed_attention": ("h2o",),
}

FULL_BUDGETS = (0.10, 0.25, 0.50, 0.75, 0.90)


@dataclass(frozen=True)
class PolicySpec:
    """One row of the grid: an engine and a method with its options (budget comes later)."""

    label: str
    engine: str
    method: str
    base: str = ""
    anchor: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    query_aware: bool = False

    @property
    def is_kvcrush(self) -> bool:
        return self.method == "kvcrush"

    def policy(self, budget: float, seed: int) -> Policy:
        """Our engine's policy at this budget (not for kvpress specs)."""
        if self.engine != ENGINE_OURS:
            raise ValueError(f"{self.label} runs on kvpress, not our engine.")
        options = dict(self.options)
        if self.is_kvcrush:
            options.update(base=self.base, anchor=self.anchor)
        return make_policy(self.method, budget=budget, seed=seed, **options)


def _window_options(method: str, window: int) -> dict[str, Any]:
    return {"window": window} if method in ("snapkv", "pyramidkv") else {}


def parse_spec(text: str, window: int = 32, crush_fraction: float = 0.25) -> PolicySpec:
    """One spec string to a `PolicySpec` (see the module docstring)."""
    raw = text.strip().lower()
    if raw.endswith("+qa"):
        spec = parse_spec(raw[:-3], window, crush_fraction)
        if spec.engine != ENGINE_OURS:
            raise ValueError(f"{text!r}: kvpress has no query-aware mode; '+qa' applies to our policies only.")
        return dataclasses.replace(spec, label=spec.label + "+qa", query_aware=True)
    if raw.startswith("kvpress:"):
        press = raw.split(":", 1)[1]
        if press not in KVPRESS_NAMES:
            raise ValueError(f"Unknown kvpress press {press!r}; choose one of {', '.join(KVPRESS_NAMES)}.")
        options = {"window_size": window} if press == "snapkv" else {}
        return PolicySpec(raw, ENGINE_KVPRESS, press, options=options)
    if raw.startswith("kvcrush"):
        parts = raw.split(":")
        base = parts[1] if len(parts) > 1 and parts[1] else "snapkv"
        anchor = parts[2] if len(parts) > 2 and parts[2] else "alternating"
        if base not in BASE_CHOICES:
            raise ValueError(f"Unknown KVCrush base {base!r}; choose one of {', '.join(BASE_CHOICES)}.")
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"Unknown anchor {anchor!r}; choose one of {', '.join(ANCHOR_MODES)}.")
        options = {"crush_fraction": crush_fraction, **_window_options(base, window)}
        return PolicySpec(f"kvcrush:{base}:{anchor}", ENGINE_OURS, "kvcrush", base, anchor, options)
    if raw == "snapkv-avg":
        return PolicySpec(raw, ENGINE_OURS, "snapkv", options={"window": window, "pooling": "avg"})
    if raw == "tova-all":
        return PolicySpec(raw, ENGINE_OURS, "tova", options={"head_reduction": "all"})
    if raw in OUR_BASELINES:
        return PolicySpec(raw, ENGINE_OURS, raw, options=_window_options(raw, window))
    raise ValueError(
        f"Unknown policy {text!r}; use one of {', '.join(OUR_BASELINES + MATCHED)}, kvcrush:BASE:ANCHOR, "
        f"kvpress:PRESS, or a group ({', '.join(GROUPS)})."
    )


GROUPS: dict[str, tuple[str, ...]] = {
    "baselines": OUR_BASELINES,
    "matched": MATCHED,
    "kvcrush-snapkv": tuple(f"kvcrush:snapkv:{a}" for a in ANCHOR_MODES),
    "kvcrush-h2o": tuple(f"kvcrush:h2o:{a}" for a in ANCHOR_MODES),
    "kvpress": tuple(f"kvpress:{p}" for p in KVPRESS_NAMES),
}
GROUPS["kvcrush"] = GROUPS["kvcrush-snapkv"] + GROUPS["kvcrush-h2o"]
GROUPS["query-aware"] = ("snapkv+qa", "kvcrush:snapkv:alternating+qa")
GROUPS["all"] = OUR_BASELINES + MATCHED + GROUPS["kvcrush"] + GROUPS["kvpress"] + GROUPS["query-aware"]

QUICK_POLICIES = ("snapkv", "snapkv-avg", "kvcrush:snapkv:alternating", "streaming", "knorm",
                  "kvpress:snapkv", "kvpress:streaming", "kvpress:knorm")


def parse_policies(items: list[str] | tuple[str, ...], window: int = 32, crush_fraction: float = 0.25,
                   ) -> list[PolicySpec]:
    """Spec strings and group names (comma- or space-separated) to unique specs, in order."""
    specs: list[PolicySpec] = []
    seen: set[str] = set()
    for item in items:
        for token in str(item).replace(",", " ").split():
            names = GROUPS.get(token.lower(), (token,))
            for name in names:
                if name.lower() == "full":
                    continue
                spec = parse_spec(name, window, crush_fraction)
                if spec.label not in seen:
                    seen.add(spec.label)
                    specs.append(spec)
    return specs


def parse_budgets(items: list[str] | tuple[Any, ...]) -> list[float]:
    """Budgets as fractions in (0, 1): ``0.25``, ``25%`` or ``25`` (percent) all mean a quarter."""
    budgets: list[float] = []
    for item in items:
        for token in str(item).replace(",", " ").split():
            value = float(token.rstrip("%"))
            if token.endswith("%") or value > 1:
                value /= 100.0
            if not 0.0 < value < 1.0:
                raise ValueError(f"Budget {token!r} must be a fraction in (0, 1) (or a percentage below 100).")
            if value not in budgets:
                budgets.append(round(value, 6))
    return sorted(budgets)
