"""KVCrush and this project's policies as NVIDIA kvpress presses.

kvpress (https://github.com/NVIDIA/kvpress, Apache-2.0) compresses the KV cache once, right after the
prefill, through a forward hook on every attention layer that calls `press.compress(module,
hidden_states, keys, values, attentions, kwargs)`. Two presses plug our engine into that hook:

- `KVCrushPress(press, compression_ratio)`: KVCrush (spec section 3; section 4 at block granularity)
  with any kvpress `ScorerPress` as its importance part::

      press = KVCrushPress(SnapKVPress(), compression_ratio=0.75)
      pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
      pipe(context, question="...", press=press)["answer"]; press.trace[0].representatives

- `as_press(policy)`: any of our policies (`kvcrush.make_policy(...)`) as a press, so kvpress's
  pipeline and evaluation harness can run it.

Both hand the layer to the engine itself (`Policy.compress`: score, then `Policy.select`), so the
budget rules, the KVCrush split, signatures, anchor, grouping and tie-breaking are the engine's own
code, and both record the last run's per-layer decisions in `press.trace` (a list of
`kvcrush.trace.LayerTrace`, one per layer, what the explorer renders). Kept rows are gathered in
position order (kvpress's ScorerPress gathers in score order; attention does not care, RoPE is
already applied to cached keys).

Budget: `compression_ratio` means what it means in kvpress, the share of pairs removed; each KV head
of each layer keeps `kvpress.utils.compute_n_kept(N, ratio) = max(1, int(N * (1 - ratio)))` tokens
(our engine's fractional budgets round up instead; the press passes kvpress's count as an integer
token budget). Ratio 0 leaves the cache untouched, as in kvpress.

`KVCrushPress` and the wrapped press's window: the wrapped press's scores already protect whatever
it protects (SnapKVPress gives its observation window the maximum score plus one), so the KVCrush
split has no sink and no recent window: `T = T_imp + T_crush`, `T_crush = round(crush_fraction * T)`,
and the window competes in the importance part, where it ranks first. Matching our engine's
`make_policy("kvcrush", budget=n_kept, base="snapkv", window=W, pooling="avg", sink=0, recent=0,
signature_heads="kv")` over `SnapKVPress(window_size=W)` therefore keeps exactly the same tokens
(tested): `recent=0` makes our SnapKV keep its window through its scores as kvpress does, instead of
as a recent window outside the split; `pooling="avg"` is kvpress's zero-padded average pooling.

The wrapped press's scores come from the engine's `kvpress` policy (`kvcrush.policies.press.KVPressPolicy`), the
one that `make_policy("kvcrush", base=press)` uses in our own engine, so both paths score a press alike: a press whose
scores read the budget (StreamingLLMPress, CriticalKVPress, CompactorPress) is given the ratio at which kvpress would
keep KVCrush's importance part, not its own `compression_ratio`.

Signatures: kvpress's `ScorerPress.score` returns `[batch, kv_heads, N]`, one row per KV head, so
the signature bits are over KV heads whatever `signature_heads` says. That is the engine's own rule for
bases that score per KV head (knorm, random, streaming: "query" and "kv" coincide); query-head
signatures would need scores per query head, which the kvpress scorer interface does not provide
(even with eager attention, a generic scorer's per-query-head scores are not defined). With few KV
heads (3 on SmolLM2-135M) the Hamming distances take only `kv_heads + 1` values, so the grouping is
coarser than with query-head signatures in our engine.

Batch size 1 only (what kvpress's pipeline uses and what our engine's traces describe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel

from kvcrush.attention import LayerInputs
from kvcrush.errors import PolicyError
from kvcrush.integrations import require_kvpress
from kvcrush.kvcache import gather_rows, merge_values
from kvcrush.policies.base import Policy
from kvcrush.policies.keydiff import KeyDiff
from kvcrush.policies.kvcrush import KVCrush
from kvcrush.policies.press import KVPressPolicy
from kvcrush.trace import LayerTrace

# Before importing kvpress: says what is wrong and what to install when kvpress is missing or does not accept the
# installed transformers (kvpress 0.5.5 requires transformers<5.3), instead of an obscure ImportError.
require_kvpress()

from kvpress.presses.base_press import BasePress  # noqa: E402
from kvpress.presses.scorer_press import ScorerPress  # noqa: E402
from kvpress.utils import compute_n_kept  # noqa: E402

__all__ = ["KVCrushPress", "PolicyPress", "PressLayerInputs", "as_press", "layer_inputs", "with_budget"]


@dataclass
class PressLayerInputs(LayerInputs):
    """A `LayerInputs` built from kvpress's hook arguments, which also carries what a kvpress scorer reads.

    attentions: the layer's attention weights `[batch, heads, N, N]` (eager attention only), else None.
    kwargs: the attention layer's forward keyword arguments (`position_embeddings`, the cache, ...).
    """

    attentions: torch.Tensor | None = None
    kwargs: dict = field(default_factory=dict)


def layer_inputs(
    module: nn.Module,
    hidden_states: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attentions: torch.Tensor | None,
    kwargs: dict,
) -> PressLayerInputs:
    """Describe one layer for our engine from the arguments kvpress passes to `compress`.

    kvpress compresses only at the prefill of an empty cache, so the `N` cached tokens are the `N`
    rows of `hidden_states` and all of them are under the budget (no query-aware window: kvpress
    appends the question after compression). Rotary embeddings come from `kwargs["position_embeddings"]`.
    """
    if keys.shape[0] != 1:
        raise ValueError(f"kvcrush presses compress one sequence at a time, got a batch of {keys.shape[0]}.")
    n_tokens = keys.shape[2]
    if hidden_states.shape[1] != n_tokens:
        raise ValueError(f"Expected the prefill of an empty cache: {hidden_states.shape[1]} hidden rows for "
                         f"{n_tokens} cached tokens.")
    cos, sin = kwargs["position_embeddings"]
    config = getattr(module.config, "text_config", module.config)
    return PressLayerInputs(
        module=module, layer_idx=module.layer_idx, n_layers=config.num_hidden_layers, hidden_states=hidden_states,
        keys=keys, values=values, cos=cos, sin=sin, n_context=n_tokens, window_start=n_tokens, query_aware=False,
        attentions=attentions, kwargs=kwargs,
    )


def with_budget(policy: Policy, tokens: int) -> Policy:
    """A copy of `policy` (and of any policy it wraps, e.g. KVCrush's base) with a budget of `tokens` per head."""
    nested = {f.name: with_budget(getattr(policy, f.name), tokens) for f in dataclasses.fields(policy)
              if f.init and isinstance(getattr(policy, f.name), Policy)}
    return dataclasses.replace(policy, budget=tokens, **nested)


@dataclass
class _EnginePress(BasePress):
    """A press whose selection is one of our policies; `trace` holds the last prefill's `LayerTrace`s."""

    def _policy_for(self, n_tokens: int) -> Policy | None:
        """The policy that compresses a layer of `n_tokens` (None: leave it untouched)."""
        raise NotImplementedError

    @contextmanager
    def __call__(self, model: PreTrainedModel) -> Generator:
        self.trace = []
        with super().__call__(model):
            yield

    def compress(
        self,
        module: nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attentions: torch.Tensor | None,
        kwargs: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self._policy_for(keys.shape[2])
        if policy is None:
            return keys, values
        layer_trace = policy.compress(layer_inputs(module, hidden_states, keys, values, attentions, kwargs))
        if self.trace and self.trace[-1].layer >= layer_trace.layer:  # hooks run in layer order: a new prefill
            self.trace = []
        self.trace.append(layer_trace)
        if layer_trace.no_op:
            return keys, values
        index = layer_trace.kept.to(keys.device)
        merged = gather_rows(values, index)
        merge_values(merged, values, index, layer_trace.merge_rows())  # KVCrush merge="values" (else no-op)
        return gather_rows(keys, index).contiguous(), merged.contiguous()


def _check_ratio(ratio: float | None) -> None:
    if ratio is not None and not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"compression_ratio must be in [0, 1) (the share of KV pairs removed), got {ratio}.")


@dataclass
class KVCrushPress(_EnginePress):
    """KVCrush with a kvpress `ScorerPress` as its importance part (see the module docstring).

    press: the wrapped scorer; only its `score` is used (its own `compression_ratio` is ignored).
    compression_ratio: share of KV pairs removed; every KV head keeps `compute_n_kept(N, ratio)` tokens.
    crush_fraction, anchor, granularity, block_size, seed: as in our `kvcrush` policy (spec 3-4).
    signature_heads: "query" (the spec's default) or "kv"; both give KV-head signatures here, because a
        kvpress scorer scores per KV head (see the module docstring).
    trace: the last prefill's `kvcrush.trace.LayerTrace` per layer (signatures, anchor, distances,
        candidates, representatives and their buckets, kept indices per KV head).
    """

    press: ScorerPress
    compression_ratio: float = 0.0
    crush_fraction: float = 0.25
    anchor: str = "alternating"
    signature_heads: str = "query"
    granularity: str = "token"
    block_size: int = 16
    seed: int = 0
    trace: list[LayerTrace] = field(default_factory=list, init=False, repr=False, compare=False)
    _policies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_ratio(self.compression_ratio)
        if not isinstance(self.press, ScorerPress):
            raise TypeError(f"KVCrushPress needs a kvpress ScorerPress, got {type(self.press).__name__}.")
        # The engine validates the KVCrush options here; the press is checked when the first layer is compressed,
        # after `post_init_from_model` has loaded the weights of presses that need some (QFilterPress, ...).
        KVCrush(budget=1, base=KeyDiff(budget=1), **self._crush_options())

    def _crush_options(self) -> dict:
        return {"crush_fraction": self.crush_fraction, "anchor": self.anchor, "signature_heads": self.signature_heads,
                "granularity": self.granularity, "block_size": self.block_size, "seed": self.seed}

    def policy(self, n_kept: int) -> KVCrush:
        """Our engine's KVCrush over the wrapped press's scores at a budget of `n_kept` tokens per head.

        The scores are the `kvpress` policy's (`kvcrush.policies.press.KVPressPolicy`, which calls the press's own
        `score` on a private copy of the press): the same as `make_policy("kvcrush", base=press, sink=0, recent=0,
        ...)` in our engine, a budget-aware press (StreamingLLMPress, CriticalKVPress, ...) sized at KVCrush's
        importance part rather than at its own `compression_ratio`.
        """
        base = KVPressPolicy(budget=n_kept, press=self.press)
        policy = KVCrush(budget=n_kept, base=base, **self._crush_options())
        base.follow_kvcrush(policy.crush_fraction)
        return policy

    @contextmanager
    def __call__(self, model: PreTrainedModel) -> Generator:
        self._policies = {}  # the press or the options may have changed since the last context: build afresh
        with super().__call__(model):
            yield

    def _policy_for(self, n_tokens: int) -> Policy | None:
        if self.compression_ratio == 0:
            return None
        n_kept = compute_n_kept(n_tokens, self.compression_ratio)
        key = (n_kept, tuple(self._crush_options().items()))
        if key not in self._policies:  # one copy of the press per budget and context, not one per layer
            self._policies[key] = self.policy(n_kept)
        return self._policies[key]

    def post_init_from_model(self, model: PreTrainedModel) -> None:
        self.press.post_init_from_model(model)


@dataclass
class PolicyPress(_EnginePress):
    """One of our policies as a kvpress press (build it with `as_press`).

    compression_ratio: None keeps the policy's own budget (a fraction rounds up, an integer is tokens);
    a float in [0, 1) is kvpress's meaning (share removed): the policy runs at an integer budget of
    `compute_n_kept(N, ratio)` tokens per head, its own split rules (sink, recent, KVCrush share) inside.
    Like every kvpress prefill press it compresses once, after the prompt; a policy's decode-time options do
    not apply here (kvpress's `DecodingPress` is its own way to compress while decoding). KVCrush's
    `merge="values"` is applied to the values returned; its `split="adaptive"` is refused (it needs every
    layer's scores before the first layer is compressed).
    """

    policy: Policy
    compression_ratio: float | None = None
    trace: list[LayerTrace] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise TypeError(f"as_press needs a kvcrush Policy (kvcrush.make_policy), got {type(self.policy).__name__}.")
        if self.policy.needs_all_layers():  # kvpress compresses one layer at a time (e.g. adaptive KVCrush split)
            raise PolicyError(f"{self.policy.name} with these options needs every layer's scores before selecting "
                              "any (kvcrush's split='adaptive'); kvpress compresses one layer at a time. Use the "
                              "fixed split here, or kvcrush.prepare(...) for the adaptive one.")
        if self.policy.storage().quantized or self.policy.budget_bytes is not None:
            raise PolicyError("kvpress stores the compressed cache in its own DynamicCache at the model's dtype: "
                              "kv_bits, representative_bits and budget_bytes apply in kvcrush.prepare(...) runs only.")
        _check_ratio(self.compression_ratio)

    def _policy_for(self, n_tokens: int) -> Policy | None:
        if self.compression_ratio is None:
            return self.policy
        if self.compression_ratio == 0:
            return None
        return with_budget(self.policy, compute_n_kept(n_tokens, self.compression_ratio))


def as_press(policy: Policy, compression_ratio: float | None = None) -> PolicyPress:
    """Any of our policies as a kvpress press: `as_press(make_policy("knorm"), compression_ratio=0.5)`.

    The policy scores the layer from what kvpress's hook passes (module, hidden states, keys, values,
    `kwargs["position_embeddings"]`) and selects with its own budget rules (`Policy.select`). Without a
    ratio the policy's own budget applies; with one, kvpress's `compute_n_kept(N, ratio)` tokens per head.
    """
    return PolicyPress(policy, compression_ratio)
