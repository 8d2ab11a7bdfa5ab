"""`kvpress`: any NVIDIA kvpress `ScorerPress` as one of our policies.

kvpress (https://github.com/NVIDIA/kvpress, Apache-2.0) ships many scoring rules as presses; each
`ScorerPress` has a `score(module, hidden_states, keys, values, attentions, kwargs)` that returns one
importance per KV head and cached token, `[batch, kv_heads, N]`, higher = keep. This policy calls that
method on a layer of our engine (`LayerInputs`) and selects with our common code, so one prefill serves
every budget (`kvcrush.prepare`) and traces, the explorer and KVCrush's split work unchanged::

    make_policy("kvpress", press="ExpectedAttentionPress", budget=0.25)
    make_policy("kvpress", press=SnapKVPress(window_size=32), budget=512)
    make_policy("kvpress", press="SnapKVPress", window_size=32)       # press options by name
    make_policy("kvpress", press="CriticalKVPress(SnapKVPress)")       # a wrapper and its scorer
    kvcrush generate --policy kvpress --press ExpectedAttentionPress ...

What the press is given, as kvpress's forward hook gives it at the end of the prefill of an empty
cache: the layer's module; its input hidden states for the `N` context tokens (where a prepared prompt
kept only the last rows, the rows before them are zeros, and the policy's `query_rows` says which rows
the press reads, so the engine prefills again when it needs rows that were not kept); the post-RoPE keys
and values of the `N` tokens; no attention weights, except for the presses that need them
(ObservedAttention), which get `[1, heads, N, N]` recomputed from the queries and keys
(`kvcrush.attention.attention_probs`, float32); and `kwargs` with `position_embeddings` (the layer's
cos/sin), `cache_position` and `position_ids`. Presses that read `module.rotary_emb` (ExpectedAttention,
CAP) get one built from the module's config for the call (kvpress assigns the model's own).

Budget: the press's own `compression_ratio` is not used; the policy's budget is (sink and recent
default to 0: whatever the press protects, its scores protect). Presses whose scores read the ratio
(StreamingLLM, CriticalKV, Compactor) are given, per layer, the ratio at which kvpress would keep the
layer's budget `T`: `compute_n_kept(N, ratio) == T`; their scores then depend on the budget, so their
`scorer_key` includes it. PyramidKV's per-layer pyramid budgets come from its own `get_layer_budget`
at the ratio `1 - budget` (a fraction) or the ratio that keeps `budget` tokens of the prompt.

KVCrush over a press: `make_policy("kvcrush", base="kvpress", press="ExpectedAttentionPress", budget=0.25)` (or
`base=<a press instance or class>`, or `base=<a KVPressPolicy>`) runs KVCrush's split and grouping over the press's
scores; options the press policy or the press takes go to the base, as for any base. Two things follow from the
press scoring per KV head and, for some presses, reading the budget:

- Signatures are over KV heads: a press returns one score row per KV head (`[kv_heads, N]`), so each token's
  signature has one bit per KV head whatever `signature_heads` says ("query" and "kv" coincide, as for knorm).
  With few KV heads the Hamming distances take only `kv_heads + 1` values, a coarser grouping than over query heads.
- A press whose scores read the budget (StreamingLLM, CriticalKV, Compactor, a press of one's own) follows KVCrush's
  budget: it is scored at the tokens it selects itself, the budget's importance part (`T` minus the KVCrush
  representatives, sink and recent included), so that e.g. StreamingLLMPress's window is exactly what KVCrush's
  importance step keeps and the representatives stand in for what it drops. `make_policy` records KVCrush's split on
  the base (`KVPressPolicy.follow_kvcrush`); the split is the fixed one (`crush_fraction`; an adaptive split's
  per-layer fractions need every layer's scores first, so they cannot size the scoring), and with
  `representative_bits` below `kv_bits` under `budget_bytes` the importance part is sized as if the
  representatives were stored at `kv_bits`. A KVCrush built directly (`KVCrush(base=KVPressPolicy(...))`) passes
  its budget but not its split: its press is scored at the whole budget unless `follow_kvcrush` is called.

Which presses run: `press_table()` classifies every name kvpress exports (a `ScorerPress` or not) and
says why the others are refused (`make_policy` raises `PolicyError` with that reason). Presses that need
trained weights or statistics from the Hugging Face Hub (Q-Filters, KVzap, ExpectedAttentionStats) are
refused by name; an instance whose weights are already loaded runs. A `ScorerPress` of your own (not
exported by kvpress) runs too, read conservatively: every hidden row, scores assumed to depend on the
budget. Decode-time eviction is not offered: kvpress's presses score a prefill (kvpress's own
`DecodingPress` is its way to compress while decoding).

The engine never imports kvpress; this module imports it only when a press is resolved or the table read.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

import torch

from kvcrush.attention import LayerInputs, attention_probs
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.policies.base import Policy
from kvcrush.policies.options import option

SUPPORTED = "supported"
NEEDS_WEIGHTS = "needs weights"
REFUSED = "refused"

# What a press's score reads from the hidden states: nothing ("keys"), the last `window_size` rows
# ("window"), the last row ("last"), every row ("all"); "attentions": every row and the attention weights.
READS = ("keys", "window", "last", "all", "attentions")

OWN_FORWARDS = "not yet supported: needs its own forward passes"
DECODING = ("kvpress presses score a prefill: the kvpress policy does not evict while decoding (decode_interval=0); "
            "kvpress's own DecodingPress does that in kvpress.")


@dataclass(frozen=True)
class ScorerInfo:
    """How one kvpress ScorerPress is run (hand-kept, from kvpress 0.5.5's source)."""

    reads: str
    budget_scores: bool = False  # its score reads `compression_ratio`
    weights: str | None = None  # attribute(s) that hold Hub weights; None: needs none
    wraps: bool = False  # its constructor takes another ScorerPress (`press`)
    note: str = ""


# Every ScorerPress subclass kvpress 0.5.5 exports, with how its score is read.
SCORERS: dict[str, ScorerInfo] = {
    "KnormPress": ScorerInfo("keys", note="minus the key norm"),
    "KeyDiffPress": ScorerInfo("keys", note="minus the cosine to the mean key direction"),
    "RandomPress": ScorerInfo("keys", note="uniform random; unseeded unless its seed is set"),
    "StreamingLLMPress": ScorerInfo("keys", budget_scores=True, note="sink + recent window sized from the budget"),
    "CURPress": ScorerInfo("keys", note="key/value leverage scores"),
    "LagKVPress": ScorerInfo("keys", note="lag-relative key/value statistics (ties within blocks)"),
    "SnapKVPress": ScorerInfo("window", note="window attention, average-pooled"),
    "PyramidKVPress": ScorerInfo("window", note="SnapKV scores; per-layer pyramid budgets from get_layer_budget"),
    "TOVAPress": ScorerInfo("last", note="last query's attention, mean over all heads"),
    "ExpectedAttentionPress": ScorerInfo("all", note="attention expected from the queries' mean and covariance"),
    "CapPress": ScorerInfo("all", note="capacity-weighted leverage of values"),
    "NonCausalAttnPress": ScorerInfo("all", note="chunked non-causal attention times value norms"),
    "LeverageScorePress": ScorerInfo("all", note="leverage of pre-RoPE keys (random sketch: global torch RNG)"),
    "CompactorPress": ScorerInfo("all", budget_scores=True,
                                 note="leverage + non-causal attention, blended by the ratio when blending=None"),
    "ObservedAttentionPress": ScorerInfo("attentions", note="attention received from every prompt query; the "
                                         "weights are recomputed, [heads, N, N] per layer"),
    "CriticalKVPress": ScorerInfo("all", budget_scores=True, wraps=True,
                                  note="a wrapped scorer's scores, re-weighted by ||V W_o||; first stage sized by "
                                  "the budget"),
    "QFilterPress": ScorerInfo("keys", weights="q_filters", note="learned Q-filters per model from the Hub"),
    "KVzapPress": ScorerInfo("all", weights="kvzap_model", note="a learned surrogate model per model from the Hub"),
    "ExpectedAttentionStatsPress": ScorerInfo("keys", weights="mu,cov",
                                              note="query statistics per model from the Hub (or a stats_folder)"),
}

# Names kvpress exports that are not runnable scorers, and why (kvpress 0.5.5).
REFUSALS: dict[str, str] = {
    "ScorerPress": "the abstract base class of scorer presses: pick one of its subclasses",
    "BasePress": "the abstract base class of all presses: it has no scores",
    "KVPressTextGenerationPipeline": "a text-generation pipeline, not a press",
    "AdaKVPress": "head-wise adaptive budgets (masks keys inside attention instead of evicting rows; each KV head "
                  "here keeps the same number of tokens): use its wrapped scorer",
    "CriticalAdaKVPress": "head-wise adaptive budgets like AdaKVPress (masks keys inside attention): use "
                          "CriticalKVPress(...) for the same scores with a budget per head",
    "ComposedPress": "chains several presses, each compressing the previous one's output: not one scorer",
    "PerLayerCompressionPress": "per-layer ratios, flash-attention only in kvpress: not a scorer",
    "KeyRerotationPress": "re-rotates the kept keys to new positions after eviction (our caches keep true "
                          "positions): use its wrapped scorer",
    "ChunkPress": "selects chunk by chunk with its own rule, not one score per token: use its wrapped scorer",
    "ChunkKVPress": "keeps whole chunks with its own selection rule, not one score per token",
    "EntropyGatedChunkKVPress": "keeps chunks gated by score entropy, its own selection rule",
    "BlockPress": "compresses block by block iteratively, its own selection rule",
    "ThinKPress": "prunes key channels (dimensions), not tokens",
    "SimLayerKVPress": "decides per layer (lazy layers keep only initial and recent tokens), not per token at a "
                       "budget",
    "DuoAttentionPress": "needs per-model head patterns downloaded from GitHub (or a calibration run), and splits "
                         "heads into streaming and retrieval heads instead of scoring tokens",
    "FinchPress": f"{OWN_FORWARDS} (a delimiter token between context and question, chunked prefill with "
                  "rerotation); our query-aware mode is the closest",
    "KVzipPress": f"{OWN_FORWARDS} (context reconstruction)",
    "KVgradPress": f"{OWN_FORWARDS} (context reconstruction with gradients)",
    "RestoreKVPress": f"{OWN_FORWARDS} (KVzip's reconstruction), and LoRA adapters from the Hugging Face Hub",
    "FastKVzipPress": "needs trained gates downloaded from the Hugging Face Hub, and its own hooks",
    "LUKVPress": "needs per-model budget curves downloaded from GitHub, and budgets per layer and head",
    "DMSPress": "evicts by a score threshold, so heads keep varying counts: not a budget",
    "KVComposePress": "needs the attention weights of every layer before composing one selection for all layers",
    "MergingPress": "merges evicted values into kept neighbours with its own rule: use its wrapped scorer",
    "DecodingPress": "compresses while decoding with its own buffer: use a scorer press here (our decode_interval "
                     "is for our own policies)",
    "CompressionRatioDecodingPress": "compresses while decoding with its own buffer (see DecodingPress)",
    "CAMPress": "merges values while decoding with its own buffer (see DecodingPress)",
    "PrefillDecodingPress": "combines a prefill press and a decoding press: use its prefill press",
}


@dataclass(frozen=True)
class PressStatus:
    """One row of `press_table()`: a name kvpress exports, what it is, and whether `make_policy` runs it."""

    name: str
    kind: str  # "scorer" (a ScorerPress subclass), "press" (another BasePress), "other"
    status: str  # SUPPORTED, NEEDS_WEIGHTS or REFUSED
    reason: str


def _kvpress():
    """kvpress imported, or a `PolicyError` saying what is wrong and what to install."""
    from kvcrush.integrations import kvpress_problem

    problem = kvpress_problem()
    if problem is not None:
        raise PolicyError(f"The kvpress policy needs kvpress: {problem}")
    import kvpress

    return kvpress


def _kind(obj: Any) -> str:
    from kvpress.presses.base_press import BasePress
    from kvpress.presses.scorer_press import ScorerPress

    if not isinstance(obj, type) or not issubclass(obj, BasePress):
        return "other"
    return "scorer" if issubclass(obj, ScorerPress) else "press"


def _status(name: str, kind: str) -> tuple[str, str]:
    if name in REFUSALS:
        return REFUSED, REFUSALS[name]
    if kind != "scorer":
        return REFUSED, ("not a press" if kind == "other" else
                         "not a ScorerPress: it compresses with its own rule, without one score per token")
    info = SCORERS.get(name)
    if info is None:
        return REFUSED, "a ScorerPress this version of kvcrush has not reviewed (pass an instance to try it)"
    if info.weights:
        return NEEDS_WEIGHTS, (f"needs {info.note}, loaded by post_init_from_model (no network here); an instance "
                               f"with {info.weights.replace(',', ' and ')} already set runs")
    if info.wraps:
        return SUPPORTED, f"{info.note}; name the wrapped scorer: {name}(SnapKVPress)"
    return SUPPORTED, info.note


def runnable_presses() -> tuple[str, ...]:
    """Every press `make_policy("kvpress", press=...)` runs by name alone: each scorer of `SCORERS` that needs no
    Hub weights, and each wrapper (CriticalKVPress) over SnapKVPress and over ExpectedAttentionPress (its paper's
    pair), as `press=` spells them.

    Read from the hand-kept table alone, so it needs no kvpress (`press_table()`, which imports it, marks exactly
    these scorers supported: tested). The one list the explorer's press choice and the benchmark grid's press systems
    read.
    """
    names: list[str] = []
    for name, info in SCORERS.items():
        if info.weights:
            continue
        names += [f"{name}({inner})" for inner in WRAPPED_SCORERS] if info.wraps else [name]
    return tuple(names)


# The scorers a wrapper press (CriticalKVPress) is offered over by name in `runnable_presses()`.
WRAPPED_SCORERS = ("SnapKVPress", "ExpectedAttentionPress")


def press_table() -> dict[str, PressStatus]:
    """Every name in `kvpress.__all__`, classified: is it a ScorerPress, does `make_policy("kvpress")` run it, why.

    The kind comes from the classes themselves; the status and reasons from the hand-kept `SCORERS` and
    `REFUSALS` tables (a ScorerPress that neither names is refused as not reviewed).
    """
    kvpress = _kvpress()
    table = {}
    for name in kvpress.__all__:
        kind = _kind(getattr(kvpress, name, None))
        status, reason = _status(name, kind)
        table[name] = PressStatus(name, kind, status, reason)
    return table


# --- resolving a press from a name, a class or an instance ------------------------------------------------------
def _normal(name: str) -> str:
    key = name.strip().lower()
    return key[: -len("press")] if key.endswith("press") else key


def _press_class(name: str) -> type:
    kvpress = _kvpress()
    matches = [n for n in kvpress.__all__ if _normal(n) == _normal(name)]
    if not matches:
        supported = ", ".join(n for n, row in press_table().items() if row.status == SUPPORTED)
        raise PolicyError(f"Unknown kvpress press {name!r}; kvpress {_version()} exports these scorer presses that "
                          f"run here: {supported}.")
    return getattr(kvpress, matches[0])


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("kvpress")


def _refuse_unless_runnable(press_cls: type, instance: Any = None) -> None:
    name = press_cls.__name__
    kvpress = _kvpress()
    exported = getattr(kvpress, name, None) is press_cls
    kind = _kind(press_cls)
    if not exported:
        if kind == "scorer":
            return  # a ScorerPress of the user's own: read conservatively (`_info`)
        raise PolicyError(f"{name} is not a kvpress ScorerPress: the kvpress policy needs one score per token.")
    status, reason = _status(name, kind)
    if status == NEEDS_WEIGHTS and instance is not None and _weights_loaded(instance, SCORERS[name]):
        return
    if status != SUPPORTED:
        raise PolicyError(f"kvpress's {name} cannot be a kvcrush policy: {reason}.")


def _weights_loaded(press: Any, info: ScorerInfo) -> bool:
    attributes = [attribute for attribute in (info.weights or "").split(",") if attribute]
    return all(getattr(press, attribute, None) is not None for attribute in attributes)


_WRAPPED = re.compile(r"^\s*([A-Za-z0-9_]+)\s*\((.*)\)\s*$")


def _from_name(text: str, press_options: dict[str, Any]) -> Any:
    """`SnapKVPress`, `snapkv`, or a wrapper with its scorer: `CriticalKVPress(SnapKVPress)`."""
    wrapped = _WRAPPED.match(text)
    outer, inner = (wrapped.group(1), wrapped.group(2)) if wrapped else (text, None)
    cls = _press_class(outer)
    _refuse_unless_runnable(cls)
    info = SCORERS.get(cls.__name__)
    arguments = dict(press_options)
    if info is not None and info.wraps:
        if not inner:
            raise PolicyError(f"{cls.__name__} wraps another scorer press: name it, e.g. {cls.__name__}(SnapKVPress) "
                              f"or {cls.__name__}(ExpectedAttentionPress).")
        arguments["press"] = _from_name(inner, {})
    elif inner:
        raise PolicyError(f"{cls.__name__} does not wrap another press; use {cls.__name__} alone.")
    allowed = _init_parameters(cls)
    unknown = set(arguments) - set(allowed)
    if unknown:
        raise PolicyError(f"{cls.__name__} does not take {', '.join(sorted(unknown))}; its options: "
                          f"{', '.join(sorted(n for n in allowed if n != 'compression_ratio')) or 'none'}.")
    try:
        return cls(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise PolicyError(f"Bad options for {cls.__name__}: {error}") from None


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD
            and p.kind is not p.VAR_POSITIONAL}


def resolve_press(press: Any, press_options: dict[str, Any] | None = None) -> Any:
    """A private copy of a runnable kvpress ScorerPress from a name, a class or an instance (`PolicyError` otherwise).

    `press_options` go to the press's constructor (a name or a class only).
    """
    press_options = dict(press_options or {})
    if press is None:
        raise PolicyError("The kvpress policy needs a press: press='ExpectedAttentionPress' (a kvpress ScorerPress "
                          "name, class or instance); kvcrush.policies.press.press_table() lists which run.")
    if isinstance(press, str):
        return _from_name(press, press_options)
    _kvpress()
    if isinstance(press, type):
        return _from_name(press.__name__, press_options) if _kind(press) != "other" else _not_a_press(press)
    if press_options:
        raise PolicyError(f"Options {', '.join(sorted(press_options))} are for the press's constructor: set them on "
                          f"the {type(press).__name__} instance instead.")
    if _kind(type(press)) == "other":
        _not_a_press(press)
    _refuse_unless_runnable(type(press), press)
    inner = getattr(press, "press", None)
    if SCORERS.get(type(press).__name__, ScorerInfo("all")).wraps and inner is not None:
        _refuse_unless_runnable(type(inner), inner)
    return copy.deepcopy(press)


def _not_a_press(press: Any) -> None:
    raise PolicyError(f"The kvpress policy needs a kvpress ScorerPress (name, class or instance), got {press!r}.")


def press_label(press: Any) -> str:
    """A press as text, for traces and comparisons: `SnapKVPress(window_size=64, kernel_size=5)`.

    Its constructor's arguments but `compression_ratio` (the policy's budget replaces it), wrapped presses nested.
    """
    parts = []
    for name, parameter in _init_parameters(type(press)).items():
        if name == "compression_ratio" or name.startswith("_"):
            continue
        value = getattr(press, name, parameter.default)
        if value is inspect.Parameter.empty:
            continue
        parts.append(f"{name}={press_label(value) if _is_press(value) else repr(value)}")
    return f"{type(press).__name__}({', '.join(parts)})"


def _is_press(value: Any) -> bool:
    return type(value).__module__.startswith("kvpress") and hasattr(value, "compress")


# --- what the press reads ------------------------------------------------------------------------------------
def _info(press: Any) -> ScorerInfo:
    """How to run `press`; a wrapper reads what its scorer reads; a ScorerPress of the user's own, everything."""
    info = SCORERS.get(type(press).__name__)
    if info is None:
        return ScorerInfo("all", budget_scores=True, note="a ScorerPress kvcrush has not reviewed")
    if info.wraps and getattr(press, "press", None) is not None:
        inner = _info(press.press)
        reads = "attentions" if "attentions" in (inner.reads, info.reads) else "all"
        return ScorerInfo(reads, budget_scores=True, wraps=True, note=info.note)
    return info


def ratio_for(n_tokens: int, kept: int) -> float:
    """The compression ratio at which kvpress keeps `kept` of `n_tokens` (`compute_n_kept(n, ratio) == kept`).

    0 when `kept >= n_tokens`. Adjusted by float steps so that `int(n * (1 - ratio))` is exactly `kept`.
    """
    if kept >= n_tokens:
        return 0.0
    kept = max(1, kept)
    ratio = 1.0 - kept / n_tokens
    while ratio > 0.0 and int(n_tokens * (1 - ratio)) < kept:
        ratio = math.nextafter(ratio, 0.0)
    while int(n_tokens * (1 - ratio)) > kept:
        ratio = math.nextafter(ratio, 1.0)
    return ratio


def _set_ratio(press: Any, ratio: float) -> Any:
    """A copy of `press` (and its wrapped scorer) at `ratio`."""
    press = copy.deepcopy(press)
    press.compression_ratio = ratio  # CriticalKVPress forwards it to its scorer, CompactorPress to its parts
    return press


@contextmanager
def _rotary_attached(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """`module.rotary_emb` for the block, as kvpress assigns it (its presses read it); a module that has one keeps it.

    Built from the module's config with the family's own rotary class, so its cos/sin equal the model's.
    """
    if hasattr(module, "rotary_emb"):
        yield
        return
    family = sys.modules[type(module).__module__]
    classes = [obj for name, obj in vars(family).items()
               if name.endswith("RotaryEmbedding") and isinstance(obj, type) and issubclass(obj, torch.nn.Module)]
    try:
        rotary = classes[0](config=module.config, device=device)
    except (IndexError, TypeError, ValueError, KeyError) as error:
        raise PolicyError(f"This press reads the layer's rotary embedding, which kvcrush cannot build for "
                          f"{type(module).__name__}: {error}") from None
    object.__setattr__(module, "rotary_emb", rotary)  # not registered as a submodule: the model is not changed
    try:
        yield
    finally:
        object.__delattr__(module, "rotary_emb")


def _fake_module(layer_idx: int, n_layers: int) -> SimpleNamespace:
    return SimpleNamespace(layer_idx=layer_idx, config=SimpleNamespace(num_hidden_layers=n_layers))


@dataclass
class KVPressPolicy(Policy):
    name = "kvpress"
    help = "The scores of a kvpress ScorerPress (press=ExpectedAttentionPress, SnapKVPress, ...), one row per KV head."
    color = "#76B900"  # NVIDIA green
    decode_eviction = False

    press: Any = option(None, "kvpress ScorerPress: a class name (ExpectedAttentionPress, snapkv, "
                        "CriticalKVPress(SnapKVPress), ...), a class or an instance; its compression_ratio is "
                        "replaced by the budget.", kind=str, scorer=True)
    # Set by `follow_kvcrush` when this policy is KVCrush's base: KVCrush's crush fraction. A press whose scores read
    # the budget is then scored at the budget's importance part (see the module docstring). Not a user option.
    crush_share: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.press = resolve_press(self.press)
        if self.decode_interval:
            raise PolicyError(DECODING)
        share = self.crush_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
            raise BudgetError(f"crush_share must be a fraction in [0, 1] (KVCrush's crush_fraction), got {share!r}.")
        self.crush_share = float(share)
        super().__post_init__()

    def follow_kvcrush(self, crush_fraction: float, budget_bytes: int | None = None, kv_bits: int = 16) -> None:
        """Make this policy, as KVCrush's base, score a budget-aware press at KVCrush's importance part.

        `KVCrush.__post_init__` calls it with its `crush_fraction`, `budget_bytes` and `kv_bits`, however the
        KVCrush was built. Changes the scorer key of budget-aware presses only.
        """
        self.crush_share = float(crush_fraction)
        self.budget_bytes = budget_bytes
        self.kv_bits = kv_bits

    @classmethod
    def option_choices(cls, name: str) -> tuple[tuple[str, ...], str] | None:
        """Choices and help for an option whose choices are known only at run time (for forms: the explorer's
        sidebar): `press` offers `runnable_presses()`, ExpectedAttentionPress first, with each one's description
        from `press_table()`. None for the other options, or when kvpress cannot be used here."""
        from kvcrush.integrations import kvpress_problem

        if name != "press" or kvpress_problem() is not None:
            return None
        table = press_table()
        names = runnable_presses()
        names = tuple(sorted(names, key=lambda n: n != "ExpectedAttentionPress"))  # stable: table order otherwise
        lines = [f"**{n}**: {table[n.split('(')[0]].reason}" for n in names]
        refused = sum(row.status != SUPPORTED for row in table.values())
        help_text = ("The kvpress ScorerPress whose own score() ranks the tokens (its compression_ratio is replaced by "
                     "the budget).\n\n" + "\n\n".join(lines)
                     + f"\n\n{refused} other names kvpress exports are refused here: "
                       "kvcrush.policies.press.press_table() says why.")
        return names, help_text

    @property
    def info(self) -> ScorerInfo:
        return _info(self.press)

    @property
    def is_pyramid(self) -> bool:
        from kvpress import PyramidKVPress

        return isinstance(self.press, PyramidKVPress)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["press"] = press_label(self.press)
        if not self.crush_share:
            described.pop("crush_share", None)  # a press of its own: nothing to say
        return described

    def scorer_key(self) -> tuple:
        key: tuple = (self.name, press_label(self.press))
        if self.info.budget_scores:  # its scores read the ratio, i.e. the budget (and, under KVCrush, its split)
            key += (("budget", self.budget, self.budget_bytes),)
            if self.crush_share:
                key += (("crush_share", self.crush_share, self.kv_bits),)
        return key

    def scoring_budget(self, layer: LayerInputs) -> int:
        """Tokens the press is told it keeps on this layer: the budget, or under KVCrush its importance part (the
        budget less the representatives' share, sink and recent included)."""
        plan = self.plan(layer, crush_fraction=self.crush_share) if self.crush_share else self.plan(layer)
        return plan.budget - plan.crush

    def supports_decode_eviction(self) -> bool:
        return False

    # --- which rows the press reads --------------------------------------------------------------------------------
    def _window(self) -> int:
        return int(getattr(self.press, "window_size", 64))

    def scoring_rows(self, n_tokens: int) -> int:
        reads = self.info.reads
        if reads == "window":
            return min(n_tokens, self._window())
        if reads == "last":
            return min(n_tokens, 1)
        if reads == "attentions":
            return n_tokens
        if reads == "all":  # the chunked non-causal attention of NonCausalAttn and Compactor
            return min(n_tokens, int(getattr(self.press, "chunk_size", 0) or 0))
        return 0

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        n = layer.n_context
        reads = self.info.reads
        if reads == "keys":
            return n, n
        if reads == "window":
            return max(0, n - self._window()), n
        if reads == "last":
            return max(0, n - 1), n
        return 0, n

    # --- budgets ------------------------------------------------------------------------------------------------
    def _ratio(self, n_tokens: int, kept: int | None = None) -> float:
        if kept is None and isinstance(self.budget, float):
            return max(0.0, 1.0 - float(self.budget))
        return ratio_for(n_tokens, kept if kept is not None else int(self.budget))

    def layer_budget(self, n_tokens: int, layer_idx: int, n_layers: int) -> int:
        """The policy's budget; PyramidKVPress: its own per-layer pyramid (`get_layer_budget` at the budget's ratio)."""
        if not self.is_pyramid:
            return super().layer_budget(n_tokens, layer_idx, n_layers)
        ratio = self._ratio(n_tokens)
        if ratio <= 0.0:
            return n_tokens
        try:
            return int(_set_ratio(self.press, ratio).get_layer_budget(_fake_module(layer_idx, n_layers), n_tokens))
        except AssertionError as error:
            raise BudgetError(f"PyramidKVPress refuses this budget: {error}") from None

    # --- scoring ------------------------------------------------------------------------------------------------
    def _hidden(self, layer: LayerInputs) -> torch.Tensor:
        """`[1, n_context, hidden]`: row i is token i's input (zeros before `hidden_offset`, rows the press does
        not read, as `query_rows` told the engine)."""
        n = layer.n_context
        hidden = layer.hidden_states
        if layer.hidden_offset:
            pad = hidden.new_zeros(hidden.shape[0], layer.hidden_offset, hidden.shape[2])
            hidden = torch.cat([pad, hidden], dim=1)
        return hidden[:, :n]

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]`: the press's own `score` on this layer's context (see the module docstring)."""
        n = layer.n_context
        start, _ = self.query_rows(layer)
        if layer.hidden_offset > start:
            raise ValueError(f"{type(self.press).__name__} reads hidden rows from {start}, kept from "
                             f"{layer.hidden_offset}")
        press = self.press
        if self.info.budget_scores:
            press = _set_ratio(press, ratio_for(n, min(n, self.scoring_budget(layer))))
        keys, values = layer.keys[:, :, :n], layer.values[:, :, :n]
        cos, sin = layer.cos[:, :n], layer.sin[:, :n]
        positions = torch.arange(n, device=keys.device)
        kwargs = {"position_embeddings": (cos, sin), "cache_position": positions, "position_ids": positions[None]}
        attentions = None
        if self.info.reads == "attentions":
            attentions = attention_probs(layer, 0, n, None)[None, :, :, :n].to(keys.dtype)
        with _rotary_attached(layer.module, keys.device):
            scores = press.score(layer.module, self._hidden(layer), keys, values, attentions, kwargs)
        return scores[0, :, :n]


def make_press_policy(budget: float | int, options: dict[str, Any]) -> KVPressPolicy:
    """`make_policy("kvpress", ...)`: our options go to the policy, the others to the press's constructor."""
    own = {f.name for f in fields(KVPressPolicy)} - {"budget", "crush_share"}
    press_options = {k: v for k, v in options.items() if k not in own}
    policy_options = {k: v for k, v in options.items() if k in own}
    press = resolve_press(policy_options.pop("press", None), press_options)
    try:
        return KVPressPolicy(budget=budget, press=press, **policy_options)
    except TypeError as error:
        raise PolicyError(f"Bad options for kvpress: {error}") from None
