"""What differs between the transformers releases this library runs on (5.2.0, which kvpress 0.5.5 needs, to the
newest on the registry), in one place.

- The KV cache argument: transformers 5.2 passes it as ``past_key_values=`` to the model and to every attention
  module; later releases call it ``cache=`` (the model still accepts ``past_key_values=`` with a FutureWarning until
  5.40, the attention modules get ``cache=`` only). `cache_kwargs` names it as the model's own ``forward`` does,
  and `hook_cache` reads it from an attention module's forward kwargs under either name.
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
