"""What differs between the transformers releases this library runs on (5.2.0, which kvpress 0.5.5 needs, to the
newest on the registry), in one place.

- The KV cache argument: transformers 5.2 passes it as ``past_key_values=`` to the model and to every attention
  module; later releases call it ``cache=`` (the model still accepts ``past_key_values=`` with a FutureWarning until
  5.40, the attention modules get ``cache=`` only). `cache_kwargs` names it as the model's own ``forward`` does,
  and `hook_cache` reads it from an attention module's forward kwargs under either name.
- A cache layer's ``update(key_states, value_states, ...)`` gets ``cache_kwargs`` in 5.2 and ``kwargs=`` later:
  `kvcrush.quantized_cache.QuantizedKVLayer.update` takes either.
- Elsewhere: the packaged tokenizer's files (`kvcrush.models.loading`, assets/tokenizer/README.md: a tokenizer class
  that later releases build differently), a GGUF ``quantization_config`` that later releases keep on a converted
  model's config (`kvcrush.models.loading.packaged_copy` drops it), and huggingface-hub 2.x, which no longer brings
  httpx (the Hub probe uses the standard library).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_parameter(model_class: type) -> str:
    try:
        parameters = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``: the name `model`'s forward takes its KV cache by."""
    return {_cache_parameter(type(model)): cache}


def hook_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache an attention module's forward was given (``cache=``, or ``past_key_values=`` on older releases)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache
