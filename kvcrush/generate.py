"""`generate`: prepare a prompt and generate from it with one policy, in one call.

Data flow: model -> per-layer scores (policy) -> selection -> the cache tensors really shrink -> trace.
This is `prepare` followed by `PreparedPrompt.generate` (see `kvcrush.prepared`); to try several
policies or budgets on one prompt, call `kvcrush.prepare` once and `generate`/`select` on it instead.
"""

from __future__ import annotations

from collections.abc import Callable

from kvcrush import limits
from kvcrush.decoding import Progress
from kvcrush.errors import RunCancelled
from kvcrush.models.loading import LoadedModel
from kvcrush.policies import Policy
from kvcrush.prepared import as_policy, check_length, check_max_new_tokens, prepare_encoded
from kvcrush.prompts import EncodedPrompt, encode_prompt
from kvcrush.trace import GenerationResult


def generate(
    model: LoadedModel,
    prompt: str,
    policy: Policy | str,
    max_new_tokens: int = 64,
    question: str | None = None,
    query_aware: bool = False,
    chat_template: bool | None = None,
    reference_ids: list[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Compress the prompt's KV cache with `policy` and generate greedily.

    With `question`, the context is compressed first and the question is appended uncompressed
    (query-agnostic); with `query_aware=True` the question is the observation window and is kept.
    `reference_ids` (e.g. the full cache's answer) adds their teacher-forced NLL to the result.
    The model's lock is held while the model runs, so concurrent callers queue instead of mixing hooks.
    """
    encoded = encode_prompt(model.tokenizer, prompt, question, chat_template)
    return generate_encoded(model, encoded, policy, max_new_tokens, query_aware, reference_ids, progress,
                            should_stop)


def generate_encoded(
    model: LoadedModel,
    encoded: EncodedPrompt,
    policy: Policy | str,
    max_new_tokens: int = 64,
    query_aware: bool = False,
    reference_ids: list[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """`generate` on token ids already split into context, question and suffix (see `kvcrush.encode_prompt`).

    `max_new_tokens=0` only prefills and compresses (useful with `reference_ids` to score a
    continuation, as the benchmark's likelihood task does).
    """
    check_max_new_tokens(max_new_tokens)
    n_positions = len(encoded.all_ids) + len(reference_ids or [])
    check_length(model, n_positions, max_new_tokens)
    if encoded.n_context:  # the whole run's estimate, before anything is allocated
        limits.preflight(model, n_positions, max_new_tokens, as_policy(policy))
    prepared = prepare_encoded(model, encoded, query_aware, progress, should_stop)
    return prepared.generate(policy, max_new_tokens, reference_ids, progress, should_stop)


__all__ = ["generate", "generate_encoded", "RunCancelled"]
