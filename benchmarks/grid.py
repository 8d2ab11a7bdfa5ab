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
  ``anchorsK`` / ``kmeansK`` (K fixed / k-means anchors), ``cfX`` (crush fraction X, e.g. ``cf0.1``),
  ``repN`` (representatives stored at N bits, 8/4/2, cheaper stand-ins than the kept rows):
  ``kvcrush:snapkv:alternating:best+adaptive``, ``kvcrush:snapkv:alternating:rep4~8b``.
- ``kvpress:PRESS``: NVIDIA kvpress's press (``snapkv``, ``streaming``, ``knorm``, ``tova``,
  ``observed_attention``, ``expected_attention``, ``keydiff``; ``kvcrush``: our `KVCrushPress` over
  SnapKVPress, run inside kvpress's own hooks) at compression ratio ``1 - budget``.
- ``press:NAME``: our engine scoring with kvpress's scorer press NAME (any case: ``press:ExpectedAttentionPress``,
  labelled ``press:expectedattentionpress``; a wrapper with its scorer: ``press:criticalkvpress(snapkvpress)``), the
  `kvpress` policy (`kvcrush.policies.press`): one prefill serves every budget, traces as for our policies. Every
  press it runs offline (`kvcrush.policies.press.runnable_presses`); SnapKV and PyramidKV get ``--window``.
- ``kvcrush:press:NAME:ANCHOR[:VARIANT]``: KVCrush over that press's scores on our engine (signatures over KV heads;
  a budget-aware press is scored at KVCrush's importance part); its base run is ``press:NAME``.
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
- ``~BITS`` / ``~BITSb`` suffix, KV storage (our engine only; between ``@all`` and ``+qa``:
  ``kvcrush:snapkv:alternating@all~4b+qa``): the kept rows are stored at BITS (16, 8, 4 or 2; 16 is the
  model's dtype, below it packed integer codes, `kvcrush.quant`). ``snapkv~4``: the budget is still a
  share of the tokens, so it holds fewer bytes than ``snapkv``. ``snapkv~4b`` (equal bytes): the budget
  is a share of the full-precision cache's *bytes*, ``budget_bytes = floor(b * N * full bytes per token
  per KV head)`` on each prompt (`benchmarks.engines.equal_bytes_budget`), so it holds no more bytes than
  ``snapkv`` at the same b and keeps more tokens. ``~16`` is the default and is dropped from the label;
  ``~16b`` is kept (a byte budget at full precision, the base of ``rep4~16b``). kvpress presses refuse it:
  they store the model's dtype.

Groups expand to several specs: ``baselines``, ``matched``, ``kvcrush`` (both bases, five anchors),
``kvcrush-snapkv``, ``kvcrush-h2o``, ``head-reduction`` (the ``@all`` variants), ``kvpress``,
``query-aware``, ``storage`` (8/4 bits at token budgets, 16/8/4 at byte budgets, 4/2-bit representatives),
``variants`` (the four KVCrush variants beyond the paper chosen on seed 1), ``presses`` (``press:NAME`` for every
runnable press), ``kvcrush-presses`` (KVCrush over each of them), ``all`` (every group; the press groups run in
--full only: their cost in the standard run is not measured yet). ``full`` (no
eviction) is always run once per sample as the reference and need not be listed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kvcrush import BASE_CHOICES, POLICIES, declared_options, make_policy
from kvcrush.crush import ANCHOR_MODES
from kvcrush.policies import KVPRESS_POLICY, Policy
from kvcrush.policies.press import KVPressPolicy, runnable_presses
from kvcrush.quant import KV_BITS

KVCRUSH = "kvcrush"
OUR_BASELINES: tuple[str, ...] = tuple(BASE_CHOICES)  # every evicting policy but KVCrush, in declaration order
# The presses the grid runs on kvpress's own engine (``kvpress:NAME``), by their grid name: the kvpress class each
# builds (``kvcrush``: our KVCrushPress over SnapKVPress, run in kvpress's hooks). The one list of them:
# `benchmarks.kvpress_runner` builds its factories from it, and the README's press table reads it.
KVPRESS_ENGINE_PRESSES: dict[str, str] = {
    "snapkv": "SnapKVPress", "streaming": "StreamingLLMPress", "knorm": "KnormPress", "tova": "TOVAPress",
    "observed_attention": "ObservedAttentionPress", "expected_attention": "ExpectedAttentionPress",
    "keydiff": "KeyDiffPress", "pyramidkv": "PyramidKVPress", "kvcrush": "KVCrushPress(SnapKVPress)",
}
KVPRESS_NAMES = tuple(KVPRESS_ENGINE_PRESSES)
# Our engine running a kvpress scorer press (``press:NAME``, ``kvcrush:press:NAME:ANCHOR``): every press the kvpress
# policy runs by name (`kvcrush.policies.press.runnable_presses`, read without importing kvpress), labelled lower case.
PRESS = "press"
OUR_PRESSES: dict[str, str] = {name.lower(): name for name in runnable_presses()}
KVCRUSH_BASES = ("snapkv", "h2o")  # the bases the grid's KVCrush groups use (any of BASE_CHOICES parses)
WINDOWED_PRESSES = ("snapkv", "pyramidkv")  # presses with an observation window: they get --window, as ours do
WINDOWED_PRESS_CLASSES = ("SnapKVPress", "PyramidKVPress")  # the same, by kvpress class (our engine's press specs)

HEAD_REDUCTION = "head_reduction"
QA_SUFFIX = "+qa"
STORAGE_MARK = "~"  # ~4: kept rows at 4 bits, token budget; ~4b: 4 bits, budget in bytes (equal bytes)
BYTES_MARK = "b"
FULL_BITS = 16  # the model's own dtype: no quantization

ENGINE_OURS = "ours"
ENGINE_KVPRESS = "kvpress"


def _policy_class(method: str) -> type[Policy]:
    return KVPressPolicy if method == KVPRESS_POLICY else POLICIES[method]


def _option(method: str, name: str):
    """The `OptionSpec` policy `method` declares under `name`, or None."""
    return next((spec for spec in declared_options(_policy_class(method)) if spec.name == name), None)


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
    options and storage (``kvcrush:snapkv:alternating@all~4b+qa`` -> ``snapkv@all~4b+qa``); empty otherwise.
    kv_bits: storage of the kept rows (16: the model's dtype). equal_bytes: the grid's budget fraction is
    a share of the full-precision cache's bytes (``~Nb``), turned into ``budget_bytes`` per prompt.
    """

    label: str
    engine: str
    method: str
    base: str = ""
    anchor: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    query_aware: bool = False
    base_label: str = ""
    kv_bits: int = FULL_BITS
    equal_bytes: bool = False

    @property
    def is_kvcrush(self) -> bool:
        return self.method == KVCRUSH

    @property
    def representative_bits(self) -> int | None:
        """KVCrush's representatives' storage bits (``repN``; kv_bits without it); None for other policies."""
        return self.options.get("representative_bits", self.kv_bits) if self.is_kvcrush else None

    def policy(self, budget: float, seed: int, budget_bytes: int | None = None) -> Policy:
        """Our engine's policy at this budget (not for kvpress specs); an equal-bytes spec needs `budget_bytes`,
        which depends on the prompt (`benchmarks.engines.equal_bytes_budget`)."""
        if self.engine != ENGINE_OURS:
            raise ValueError(f"{self.label} runs on kvpress, not our engine.")
        if self.equal_bytes and budget_bytes is None:
            raise ValueError(f"{self.label} budgets bytes: pass budget_bytes (benchmarks.engines.equal_bytes_budget "
                             "computes it from the prompt).")
        options = dict(self.options)
        if self.is_kvcrush:
            options.update(base=self.base, anchor=self.anchor)
        if self.kv_bits != FULL_BITS:
            options["kv_bits"] = self.kv_bits
        if budget_bytes is not None:
            options["budget_bytes"] = budget_bytes
        return make_policy(self.method, budget=budget, seed=seed, **options)


def _window_options(method: str, window: int) -> dict[str, Any]:
    """``--window`` for the policies that declare a ``window`` option."""
    return {"window": window} if _option(method, "window") is not None else {}


@dataclass(frozen=True)
class Suffixes:
    """What follows a spec's name, always in this order: ``@REDUCTION``, ``~BITS[b]``, ``+qa``."""

    reduction: str | None = None
    storage: str | None = None  # the text after "~", e.g. "4b"
    query_aware: bool = False

    @property
    def text(self) -> str:
        return ((f"@{self.reduction}" if self.reduction else "")
                + (f"{STORAGE_MARK}{self.storage}" if self.storage else "")
                + (QA_SUFFIX if self.query_aware else ""))


def split_suffixes(raw: str) -> tuple[str, Suffixes]:
    """``name@reduction~bits+qa`` -> (name, its `Suffixes`); each suffix is optional."""
    query_aware = raw.endswith(QA_SUFFIX)
    if query_aware:
        raw = raw[: -len(QA_SUFFIX)]
    storage = None
    if STORAGE_MARK in raw:
        raw, storage = raw.rsplit(STORAGE_MARK, 1)
    reduction = None
    if "@" in raw:
        raw, reduction = raw.rsplit("@", 1)
    return raw, Suffixes(reduction, storage, query_aware)


def parse_spec(text: str, window: int = 32, crush_fraction: float = 0.25) -> PolicySpec:
    """One spec string to a `PolicySpec` (see the module docstring)."""
    raw = text.strip().lower()
    if raw == "tova-all":  # older name of tova@all
        raw = "tova@all"
    name, suffixes = split_suffixes(raw)
    spec = _parse_name(name, text, window, crush_fraction)
    if suffixes.reduction is not None:
        spec = _with_head_reduction(spec, suffixes.reduction, text)
    if suffixes.storage is not None:
        spec = _with_storage(spec, suffixes.storage, text)
    if spec.options.get("representative_bits") == spec.kv_bits:
        raise ValueError(f"{text!r}: rep{spec.kv_bits} stores the representatives at kv_bits, as without it; "
                         "drop it (labels must name different runs).")
    if suffixes.query_aware:
        spec = _with_suffix(spec, QA_SUFFIX, query_aware=True)
    return spec


def _with_suffix(spec: PolicySpec, suffix: str, **changes: Any) -> PolicySpec:
    """`spec` with `suffix` on its label and its base's label (a KVCrush base runs with the same suffixes)."""
    return dataclasses.replace(spec, label=spec.label + suffix,
                               base_label=spec.base_label + suffix if spec.base_label else "", **changes)


def parse_storage(storage: str, text: str = "") -> tuple[int, bool]:
    """``4`` -> (4, False), ``4b`` -> (4, True): kv_bits and whether the budget is in bytes (equal bytes)."""
    equal_bytes = storage.endswith(BYTES_MARK)
    digits = storage[: -len(BYTES_MARK)] if equal_bytes else storage
    if not digits.isdigit() or int(digits) not in KV_BITS:
        raise ValueError(f"{text or storage!r}: storage suffix must be ~BITS or ~BITSb with BITS one of "
                         f"{', '.join(map(str, KV_BITS))}, written after @REDUCTION and before +qa "
                         f"(e.g. snapkv@all~4b+qa); got ~{storage}.")
    return int(digits), equal_bytes


def _with_storage(spec: PolicySpec, storage: str, text: str) -> PolicySpec:
    if spec.engine != ENGINE_OURS:
        raise ValueError(f"{text!r}: '~{storage}' sets our engine's KV storage; kvpress presses keep the model's "
                         "dtype (as_press refuses kv_bits and budget_bytes).")
    bits, equal_bytes = parse_storage(storage, text)
    if bits == FULL_BITS and not equal_bytes:
        return spec  # the default: same label, same policy
    suffix = f"{STORAGE_MARK}{bits}{BYTES_MARK if equal_bytes else ''}"
    return _with_suffix(spec, suffix, kv_bits=bits, equal_bytes=equal_bytes)


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
    return _with_suffix(spec, f"@{reduction}", options={**spec.options, HEAD_REDUCTION: reduction})


def _parse_name(raw: str, text: str, window: int, crush_fraction: float) -> PolicySpec:
    if raw.startswith("kvpress:"):
        press = raw.split(":", 1)[1]
        if press not in KVPRESS_NAMES:
            raise ValueError(f"Unknown kvpress press {press!r}; choose one of {', '.join(KVPRESS_NAMES)}.")
        options = {"window_size": window} if press in WINDOWED_PRESSES else {}
        return PolicySpec(raw, ENGINE_KVPRESS, press, options=options)
    if raw.startswith(PRESS + ":"):
        return _press_spec(raw.split(":", 1)[1], text, window)
    if raw == KVCRUSH or raw.startswith(KVCRUSH + ":"):
        parts = _fields(raw)
        base = parts[1] if len(parts) > 1 and parts[1] else "snapkv"
        anchor = parts[2] if len(parts) > 2 and parts[2] else "alternating"
        if base.startswith(PRESS + ":"):  # KVCrush over a kvpress press, on our engine
            press = _press_spec(base.split(":", 1)[1], text, window)
            base, base_method, base_options = press.label, KVPRESS_POLICY, press.options
        elif base not in BASE_CHOICES:
            raise ValueError(f"Unknown KVCrush base {base!r}; choose one of {', '.join(BASE_CHOICES)}, or "
                             f"{PRESS}:NAME (a kvpress press: {', '.join(OUR_PRESSES)}).")
        else:
            base_method, base_options = base, _window_options(base, window)
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"Unknown anchor {anchor!r}; choose one of {', '.join(ANCHOR_MODES)}.")
        options = {"crush_fraction": crush_fraction, **base_options}
        label = f"{KVCRUSH}:{base}:{anchor}"
        if len(parts) > 3 and parts[3]:
            options.update(variant_options(parts[3], text))
            label += ":" + parts[3]
        return PolicySpec(label, ENGINE_OURS, KVCRUSH, base_method, anchor, options, base_label=base)
    if raw == "snapkv-avg":
        return PolicySpec(raw, ENGINE_OURS, "snapkv", options={"window": window, "pooling": "avg"})
    if raw in OUR_BASELINES:
        return PolicySpec(raw, ENGINE_OURS, raw, options=_window_options(raw, window))
    raise ValueError(
        f"Unknown policy {text!r}; use one of {', '.join(OUR_BASELINES + MATCHED)}, kvcrush:BASE:ANCHOR, "
        f"kvpress:PRESS, press:NAME, kvcrush:press:NAME:ANCHOR, suffixes in this order: @all, ~BITS or ~BITSb, +qa; "
        f"or a group ({', '.join(GROUPS)})."
    )


def _press_spec(name: str, text: str, window: int) -> PolicySpec:
    """``press:NAME``: our engine scoring with kvpress's press NAME (any case, `OUR_PRESSES`); SnapKV and PyramidKV
    get ``--window`` as their ``window_size``, as on kvpress's engine."""
    press = OUR_PRESSES.get(name)
    if press is None:
        raise ValueError(f"{text!r}: unknown press {name!r} for {PRESS}:NAME; choose one of "
                         f"{', '.join(OUR_PRESSES)} (kvcrush.policies.press.press_table() says why others are "
                         "refused).")
    options: dict[str, Any] = {"press": press}
    if press in WINDOWED_PRESS_CLASSES:
        options["window_size"] = window
    return PolicySpec(f"{PRESS}:{name}", ENGINE_OURS, KVPRESS_POLICY, options=options)


def _fields(name: str) -> list[str]:
    """A KVCrush name's ``:``-separated fields, a ``press:NAME`` base kept as one field:
    ``kvcrush:press:snapkvpress:mean`` -> ``["kvcrush", "press:snapkvpress", "mean"]``."""
    parts = name.split(":")
    if len(parts) > 2 and parts[1] == PRESS:
        parts[1:3] = [f"{PRESS}:{parts[2]}"]
    return parts


_VARIANT_FLAGS: dict[str, dict[str, Any]] = {
    "best": {"representative": "best"},
    "adaptive": {"split": "adaptive"},
    "merge": {"merge": "values"},
}


def variant_options(variant: str, text: str = "") -> dict[str, Any]:
    """KVCrush options of a ``+``-joined variant name (``best+adaptive``, ``kmeans4``, ``cf0.1``, ``rep4``...)."""
    options: dict[str, Any] = {}
    for token in variant.split("+"):
        if token in _VARIANT_FLAGS:
            options.update(_VARIANT_FLAGS[token])
        elif token.startswith("kmeans") and token[6:].isdigit():
            options.update(anchors=int(token[6:]), anchor_mode="kmeans")
        elif token.startswith("anchors") and token[7:].isdigit():
            options.update(anchors=int(token[7:]), anchor_mode="fixed")
        elif token.startswith("rep") and token[3:].isdigit():
            bits = int(token[3:])
            if bits not in KV_BITS:
                raise ValueError(f"{text or variant!r}: representative bits must be one of "
                                 f"{', '.join(map(str, KV_BITS))}, got {token!r}.")
            options["representative_bits"] = bits
        elif token.startswith("cf"):
            try:
                options["crush_fraction"] = float(token[2:])
            except ValueError:
                raise ValueError(f"{text or variant!r}: bad crush fraction {token!r} (e.g. cf0.1).") from None
        else:
            raise ValueError(f"{text or variant!r}: unknown KVCrush variant {token!r}; use best, adaptive, merge, "
                             "anchorsK, kmeansK, cfX or repN, joined with '+'.")
    return options


def _kvcrush_fields(label: str) -> tuple[list[str], Suffixes]:
    """A KVCrush label's ``:``-separated fields (``kvcrush``, base, anchor, variant) and its suffixes; no
    fields for other labels."""
    if not label.startswith(KVCRUSH + ":"):
        return [], Suffixes()
    name, suffixes = split_suffixes(label)
    return _fields(name), suffixes


def base_label(label: str) -> str | None:
    """The label of a KVCrush spec's base run alone with the same suffixes (storage included); None for
    other labels."""
    parts, suffixes = _kvcrush_fields(label)
    return parts[1] + suffixes.text if len(parts) > 1 and parts[1] else None


def paper_label(label: str) -> str | None:
    """``kvcrush:B:A:VARIANT@x~bits+qa`` -> ``kvcrush:B:A@x~bits+qa`` (the paper's method with the same
    suffixes); None for other labels."""
    parts, suffixes = _kvcrush_fields(label)
    return ":".join(parts[:3]) + suffixes.text if len(parts) > 3 else None


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
# KV storage: each KVCrush base alone and under the paper's KVCrush at 8 and 4 bits with token budgets, and at
# 16/8/4 bits with byte budgets (equal bytes); KVCrush with cheaper representatives (4 bits beside 16- and
# 8-bit rows, 2 beside 4) at equal bytes, so each is compared with its base and the paper's KVCrush in the
# same bytes. 16 bits at a token budget is the plain spec.
STORAGE_SUFFIXES = ("~8", "~4", "~16b", "~8b", "~4b")
STORAGE_REPRESENTATIVES = ("rep4~16b", "rep4~8b", "rep2~4b")
GROUPS["storage"] = tuple(
    [f"{name}{suffix}" for base in KVCRUSH_BASES for name in (base, f"kvcrush:{base}:alternating")
     for suffix in STORAGE_SUFFIXES]
    + [f"kvcrush:{base}:alternating:{variant}" for base in KVCRUSH_BASES for variant in STORAGE_REPRESENTATIVES])
# KVCrush with options beyond the paper (spec section 7), the four chosen on development seed 1 and measured
# on the test seed when issue 11 closed (benchmarks/results/dev-variants-seed1, benchmarks/README.md).
GROUPS["variants"] = tuple(f"kvcrush:snapkv:alternating:{variant}"
                           for variant in ("best", "adaptive", "kmeans4", "merge"))
# Our engine scoring with every press the kvpress policy runs offline (`OUR_PRESSES`), alone and under the paper's
# KVCrush: every press is a system of the --full grid. The press table of benchmarks/README.md is `press_table_md()`.
GROUPS["presses"] = tuple(f"{PRESS}:{name}" for name in OUR_PRESSES)
GROUPS["kvcrush-presses"] = tuple(f"{KVCRUSH}:{PRESS}:{name}:alternating" for name in OUR_PRESSES)
GROUPS["all"] = tuple(dict.fromkeys(OUR_BASELINES + MATCHED + GROUPS["kvcrush"] + GROUPS["head-reduction"]
                                   + GROUPS["kvpress"] + GROUPS["query-aware"] + GROUPS["storage"]
                                   + GROUPS["variants"] + GROUPS["presses"] + GROUPS["kvcrush-presses"]))

# The standard run (benchmarks.run --standard), sized to finish within an hour on 2 CPU cores: the three KVCrush
# bases alone and under the paper's KVCrush, every kvpress press, and both query modes for SnapKV and KVCrush on
# both engines (SnapKV's head reduction too), and SnapKV at 4 bits (`STORAGE_STANDARD`). Measured: a 1k-token
# needle item costs about 25 s (both engines, 97 runs) and a 2k-token likelihood item 40-80 s, so the four
# variants beyond the paper (group `variants`, 16 more of our runs per item, about 6 minutes) run in --full
# and with `--policies variants`. Our knorm/streaming/keydiff equal kvpress's presses (parity tests) and run
# in --full.
# Storage in the standard run: SnapKV at 4 bits with the same tokens and with the same bytes as full-precision
# SnapKV, the equal-bytes comparison and two more points of the quality-versus-bytes front. KVCrush over 4-bit
# SnapKV runs in --quick and --full. Not KVCrush in equal bytes: 4-bit rows cost 1/7 of float32 ones (1/3.6 of
# bfloat16), so from a 14% budget on a CPU (28% on a GPU) snapkv~4b keeps every token and KVCrush would only
# repeat it.
STORAGE_STANDARD = ("snapkv~4", "snapkv~4b")
STANDARD_POLICIES = (
    "snapkv", "h2o", "tova",
    "kvcrush:snapkv:alternating", "kvcrush:h2o:alternating", "kvcrush:tova:alternating",
    "kvpress:snapkv", "kvpress:streaming", "kvpress:knorm", "kvpress:tova", "kvpress:observed_attention",
    "kvpress:expected_attention", "kvpress:keydiff", "kvpress:pyramidkv",
    "snapkv+qa", "snapkv@all+qa", "kvcrush:snapkv:alternating+qa", "kvpress:snapkv+qa",
    *STORAGE_STANDARD,
)

QUICK_POLICIES = ("snapkv", "snapkv-avg", "snapkv@all", "kvcrush:snapkv:alternating", "streaming", "knorm",
                  "kvpress:snapkv", "kvpress:streaming", "kvpress:knorm", *STORAGE_STANDARD,
                  "kvcrush:snapkv:alternating~4")


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


def press_table_md() -> str:
    """The README's table of every name kvpress exports: its status here (`kvcrush.policies.press.press_table`), the
    grid systems that run it (our engine: ``press:NAME`` and ``kvcrush:press:NAME:alternating``, --full; kvpress's
    engine: ``kvpress:NAME``), and the reason (what it scores, or why it is refused). Needs kvpress."""
    from kvcrush.policies.press import press_table

    on_kvpress: dict[str, list[str]] = {}
    for grid_name, press in KVPRESS_ENGINE_PRESSES.items():
        on_kvpress.setdefault(press.split("(")[0], []).append(f"`kvpress:{grid_name}`")
    rows = ["| kvpress name | kind | status | grid systems | what it scores, or why it is refused |",
            "| --- | --- | --- | --- | --- |"]
    for name, row in press_table().items():
        ours = [f"`{PRESS}:{label}`" for label, press in OUR_PRESSES.items() if press.split("(")[0] == name]
        systems = ", ".join(ours + on_kvpress.get(name, [])) or "none"
        reason = row.reason.replace("|", "\\|")
        rows.append(f"| {name} | {row.kind} | {row.status} | {systems} | {reason} |")
    return "\n".join(rows)
