"""Which policies and kvpress presses run, and at which budgets.

A policy is named by a short spec string, which is also its label in every table and CSV. Our policy
names, KVCrush's bases and the options a suffix may set are read from the policies' own declarations
(`kvcrush.POLICIES`, `kvcrush.BASE_CHOICES`, `kvcrush.declared_options`), so a new policy file is in
the grid without touching this one:

- ``snapkv``, ``h2o``, ``streaming``, ``pyramidkv``, ``tova``, ``knorm``, ``random`` (every evicting
  policy in `kvcrush.POLICIES` but KVCrush): our baselines with their defaults; a policy that declares
  a ``window`` option (SnapKV, PyramidKV) gets ``--window`` (default 32, max pooling).
- ``snapkv-avg``: our SnapKV with average pooling, which is what kvpress's SnapKVPress does.
- ``kvcrush:BASE:ANCHOR``: KVCrush over one of our baselines (`kvcrush.BASE_CHOICES`) with that anchor
  (``random|zeros|ones|mean|alternating``) and ``--crush-fraction`` (default 0.25).
- ``kvcrush:BASE:ANCHOR:VARIANT``: KVCrush with options beyond the paper (spec section 7), ``+``-joined:
  ``best`` (representative="best"), ``adaptive`` (split="adaptive"), ``merge`` (merge="values"),
  ``anchorsK`` / ``kmeansK`` (K fixed / k-means anchors), ``cfX`` (crush fraction X, e.g. ``cf0.1``):
  ``kvcrush:snapkv:alternating:best+adaptive``.
- ``kvpress:PRESS``: NVIDIA kvpress's press (``snapkv``, ``streaming``, ``knorm``, ``tova``,
  ``observed_attention``, ``expected_attention``, ``keydiff``; ``kvcrush``: our `KVCrushPress` over
  SnapKVPress, run inside kvpress's own hooks) at compression ratio ``1 - budget``.
- ``@all`` suffix, head reduction: policies that declare ``head_reduction`` (H2O, SnapKV, PyramidKV,
  TOVA, and KVCrush over any of them, where it goes to the base) rank tokens per GQA group by default
  (``group``: each KV head by the mean of its own query heads); ``snapkv@all``,
  ``kvcrush:snapkv:alternating@all`` average every query head of the layer instead, so all KV heads
  keep the same tokens. ``@group`` names the default and is dropped from the label. ``tova@all`` is
  kvpress's TOVAPress reduction (``tova-all`` is accepted as an older name for it).
- ``+qa`` suffix (after ``@all`` if both): run query-aware. Ours (``snapkv+qa``,
  ``kvcrush:snapkv:alternating+qa``): the question is the observation window and is kept (inside the
  budget). kvpress (``kvpress:snapkv+qa``): the question is part of the compressed context, as
  kvpress's own leaderboard runs it (the template's closing tokens are appended after compression).
  These rows are a secondary setting beside the primary, query-agnostic one.

Groups expand to several specs: ``baselines``, ``matched``, ``kvcrush`` (both bases, five anchors),
``kvcrush-snapkv``, ``kvcrush-h2o``, ``head-reduction`` (the ``@all`` variants), ``kvpress``,
``query-aware``, ``all``. ``full`` (no eviction) is always run once per sample as the reference and
need not be listed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kvcrush import BASE_CHOICES, POLICIES, declared_options, make_policy
from kvcrush.crush import ANCHOR_MODES
from kvcrush.policies import Policy

KVCRUSH = "kvcrush"
OUR_BASELINES: tuple[str, ...] = tuple(BASE_CHOICES)  # every evicting policy but KVCrush, in declaration order
KVPRESS_NAMES = ("snapkv", "streaming", "knorm", "tova", "observed_attention", "expected_attention", "keydiff",
                 "pyramidkv", "kvcrush")  # kvpress:kvcrush = our KVCrushPress over SnapKVPress, in kvpress's hooks
KVCRUSH_BASES = ("snapkv", "h2o")  # the bases the grid's KVCrush groups use (any of BASE_CHOICES parses)
WINDOWED_PRESSES = ("snapkv", "pyramidkv")  # presses with an observation window: they get --window, as ours do

HEAD_REDUCTION = "head_reduction"
QA_SUFFIX = "+qa"

ENGINE_OURS = "ours"
ENGINE_KVPRESS = "kvpress"


def _option(method: str, name: str):
    """The `OptionSpec` policy `method` declares under `name`, or None."""
    return next((spec for spec in declared_options(POLICIES[method]) if spec.name == name), None)


def head_reduction_choices(method: str) -> tuple[str, ...]:
    """The head reductions policy `method` declares (empty when it has no such option)."""
    spec = _option(method, HEAD_REDUCTION)
    return tuple(spec.choices or ()) if spec is not None else ()


def head_reduction_default(method: str) -> str | None:
    spec = _option(method, HEAD_REDUCTION)
    return None if spec is None else spec.default


HEAD_REDUCTION_POLICIES = tuple(name for name in OUR_BASELINES if head_reduction_choices(name))
MATCHED = ("snapkv-avg", "tova@all")

# Which of our policies each kvpress press should agree with (same idea, same inputs).
# Our specs that reproduce a press's exact settings, beside the policy that declares the press.
_MATCHED_SETTINGS: dict[str, tuple[str, ...]] = {"snapkv": ("snapkv-avg",), "tova": ("tova@all",)}
PARITY_PAIRS: dict[str, tuple[str, ...]] = {
    f"kvpress:{cls.kvpress_press}": (name, *_MATCHED_SETTINGS.get(name, ()))
    for name, cls in POLICIES.items() if cls.kvpress_press
}

FULL_BUDGETS = (0.10, 0.25, 0.50, 0.75)


@dataclass(frozen=True)
class PolicySpec:
    """One row of the grid: an engine and a method with its options (budget comes later).

    base_label: for KVCrush, the label of the spec that runs its base policy alone with the same
    options (``kvcrush:snapkv:alternating@all+qa`` -> ``snapkv@all+qa``); empty otherwise.
    """

    label: str
    engine: str
    method: str
    base: str = ""
    anchor: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    query_aware: bool = False
    base_label: str = ""

    @property
    def is_kvcrush(self) -> bool:
        return self.method == KVCRUSH

    def policy(self, budget: float, seed: int) -> Policy:
        """Our engine's policy at this budget (not for kvpress specs)."""
        if self.engine != ENGINE_OURS:
            raise ValueError(f"{self.label} runs on kvpress, not our engine.")
        options = dict(self.options)
        if self.is_kvcrush:
            options.update(base=self.base, anchor=self.anchor)
        return make_policy(self.method, budget=budget, seed=seed, **options)


def _window_options(method: str, window: int) -> dict[str, Any]:
    """``--window`` for the policies that declare a ``window`` option."""
    return {"window": window} if _option(method, "window") is not None else {}


def _split_suffixes(raw: str) -> tuple[str, str | None, bool]:
    """``name@reduction+qa`` -> (name, reduction or None, query-aware)."""
    query_aware = raw.endswith(QA_SUFFIX)
    if query_aware:
        raw = raw[: -len(QA_SUFFIX)]
    reduction = None
    if "@" in raw:
        raw, reduction = raw.rsplit("@", 1)
    return raw, reduction, query_aware


def parse_spec(text: str, window: int = 32, crush_fraction: float = 0.25) -> PolicySpec:
    """One spec string to a `PolicySpec` (see the module docstring)."""
    raw = text.strip().lower()
    if raw == "tova-all":  # older name of tova@all
        raw = "tova@all"
    name, reduction, query_aware = _split_suffixes(raw)
    spec = _parse_name(name, text, window, crush_fraction)
    if reduction is not None:
        spec = _with_head_reduction(spec, reduction, text)
    if query_aware:
        spec = dataclasses.replace(spec, label=spec.label + QA_SUFFIX, query_aware=True,
                                   base_label=spec.base_label + QA_SUFFIX if spec.base_label else "")
    return spec


def _with_head_reduction(spec: PolicySpec, reduction: str, text: str) -> PolicySpec:
    if spec.engine != ENGINE_OURS:
        raise ValueError(f"{text!r}: '@{reduction}' sets our policies' head_reduction; kvpress presses have none.")
    owner = spec.base if spec.is_kvcrush else spec.method
    choices = head_reduction_choices(owner)
    if not choices:
        raise ValueError(f"{text!r}: {owner} has no head_reduction option (policies that do: "
                         f"{', '.join(HEAD_REDUCTION_POLICIES)}).")
    if reduction not in choices:
        raise ValueError(f"{text!r}: head_reduction must be one of {', '.join(choices)}, got {reduction!r}.")
    if reduction == head_reduction_default(owner):
        return spec  # the default: same label, same policy
    suffix = f"@{reduction}"
    return dataclasses.replace(spec, label=spec.label + suffix, options={**spec.options, HEAD_REDUCTION: reduction},
                               base_label=spec.base_label + suffix if spec.base_label else "")


def _parse_name(raw: str, text: str, window: int, crush_fraction: float) -> PolicySpec:
    if raw.startswith("kvpress:"):
        press = raw.split(":", 1)[1]
        if press not in KVPRESS_NAMES:
            raise ValueError(f"Unknown kvpress press {press!r}; choose one of {', '.join(KVPRESS_NAMES)}.")
        options = {"window_size": window} if press in WINDOWED_PRESSES else {}
        return PolicySpec(raw, ENGINE_KVPRESS, press, options=options)
    if raw == KVCRUSH or raw.startswith(KVCRUSH + ":"):
        parts = raw.split(":")
        base = parts[1] if len(parts) > 1 and parts[1] else "snapkv"
        anchor = parts[2] if len(parts) > 2 and parts[2] else "alternating"
        if base not in BASE_CHOICES:
            raise ValueError(f"Unknown KVCrush base {base!r}; choose one of {', '.join(BASE_CHOICES)}.")
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"Unknown anchor {anchor!r}; choose one of {', '.join(ANCHOR_MODES)}.")
        options = {"crush_fraction": crush_fraction, **_window_options(base, window)}
        label = f"{KVCRUSH}:{base}:{anchor}"
        if len(parts) > 3 and parts[3]:
            options.update(variant_options(parts[3], text))
            label += ":" + parts[3]
        return PolicySpec(label, ENGINE_OURS, KVCRUSH, base, anchor, options, base_label=base)
    if raw == "snapkv-avg":
        return PolicySpec(raw, ENGINE_OURS, "snapkv", options={"window": window, "pooling": "avg"})
    if raw in OUR_BASELINES:
        return PolicySpec(raw, ENGINE_OURS, raw, options=_window_options(raw, window))
    raise ValueError(
        f"Unknown policy {text!r}; use one of {', '.join(OUR_BASELINES + MATCHED)}, kvcrush:BASE:ANCHOR, "
        f"kvpress:PRESS, a @all or +qa suffix, or a group ({', '.join(GROUPS)})."
    )


_VARIANT_FLAGS: dict[str, dict[str, Any]] = {
    "best": {"representative": "best"},
    "adaptive": {"split": "adaptive"},
    "merge": {"merge": "values"},
}


def variant_options(variant: str, text: str = "") -> dict[str, Any]:
    """KVCrush options of a ``+``-joined variant name (``best+adaptive``, ``kmeans4``, ``cf0.1``...)."""
    options: dict[str, Any] = {}
    for token in variant.split("+"):
        if token in _VARIANT_FLAGS:
            options.update(_VARIANT_FLAGS[token])
        elif token.startswith("kmeans") and token[6:].isdigit():
            options.update(anchors=int(token[6:]), anchor_mode="kmeans")
        elif token.startswith("anchors") and token[7:].isdigit():
            options.update(anchors=int(token[7:]), anchor_mode="fixed")
        elif token.startswith("cf"):
            try:
                options["crush_fraction"] = float(token[2:])
            except ValueError:
                raise ValueError(f"{text or variant!r}: bad crush fraction {token!r} (e.g. cf0.1).") from None
        else:
            raise ValueError(f"{text or variant!r}: unknown KVCrush variant {token!r}; use best, adaptive, merge, "
                             "anchorsK, kmeansK or cfX, joined with '+'.")
    return options


def base_label(label: str) -> str | None:
    """The label of a KVCrush spec's base run alone with the same suffixes; None for other labels."""
    if not label.startswith(KVCRUSH + ":"):
        return None
    name, reduction, query_aware = _split_suffixes(label)
    parts = name.split(":")
    if len(parts) < 2 or not parts[1]:
        return None
    return parts[1] + (f"@{reduction}" if reduction else "") + (QA_SUFFIX if query_aware else "")


GROUPS: dict[str, tuple[str, ...]] = {
    "baselines": OUR_BASELINES,
    "matched": MATCHED,
    "kvcrush-snapkv": tuple(f"kvcrush:snapkv:{a}" for a in ANCHOR_MODES),
    "kvcrush-h2o": tuple(f"kvcrush:h2o:{a}" for a in ANCHOR_MODES),
    "kvpress": tuple(f"kvpress:{p}" for p in KVPRESS_NAMES),
}
GROUPS["kvcrush"] = GROUPS["kvcrush-snapkv"] + GROUPS["kvcrush-h2o"]
GROUPS["head-reduction"] = (tuple(f"{name}@all" for name in HEAD_REDUCTION_POLICIES)
                            + tuple(f"kvcrush:{base}:alternating@all" for base in KVCRUSH_BASES
                                    if "all" in head_reduction_choices(base)))
GROUPS["query-aware"] = ("snapkv+qa", "kvcrush:snapkv:alternating+qa", "kvpress:snapkv+qa")
GROUPS["all"] = tuple(dict.fromkeys(OUR_BASELINES + MATCHED + GROUPS["kvcrush"] + GROUPS["head-reduction"]
                                   + GROUPS["kvpress"] + GROUPS["query-aware"]))

# The standard run (benchmarks.run --standard), sized to finish within an hour on 2 CPU cores (measured:
# about 0.25 s per run of ours and 0.15 s per kvpress run on a 1k-token needle, after batching): the three
# KVCrush bases alone and under the paper's KVCrush, the four variants beyond the paper (chosen on seed 1,
# see benchmarks/README.md), every kvpress press, and both query modes for SnapKV and KVCrush on both
# engines (SnapKV's head reduction too). Our knorm/streaming/keydiff equal kvpress's presses (parity tests)
# and run in --full.
STANDARD_POLICIES = (
    "snapkv", "h2o", "tova",
    "kvcrush:snapkv:alternating", "kvcrush:h2o:alternating", "kvcrush:tova:alternating",
    "kvcrush:snapkv:alternating:best", "kvcrush:snapkv:alternating:adaptive", "kvcrush:snapkv:alternating:kmeans4",
    "kvcrush:snapkv:alternating:merge",
    "kvpress:snapkv", "kvpress:streaming", "kvpress:knorm", "kvpress:tova", "kvpress:observed_attention",
    "kvpress:expected_attention", "kvpress:keydiff", "kvpress:pyramidkv",
    "snapkv+qa", "snapkv@all+qa", "kvcrush:snapkv:alternating+qa", "kvpress:snapkv+qa",
)

QUICK_POLICIES = ("snapkv", "snapkv-avg", "snapkv@all", "kvcrush:snapkv:alternating", "streaming", "knorm",
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
