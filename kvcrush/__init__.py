"""KVCrush Explorer: KV-cache eviction policies, KVCrush, and a trace of every decision.

    import kvcrush
    lm = kvcrush.load_model()                       # packaged SmolLM2-135M-Instruct
    policy = kvcrush.make_policy("kvcrush", budget=0.25, base="snapkv")
    result = kvcrush.generate(lm, text, policy, question="What is ...?")
    result.text, result.kv_bytes_before, result.kv_bytes_after, result.trace.layers[0].kept

    prepared = kvcrush.prepare(lm, text, question="What is ...?")    # prefill once ...
    prepared.select(policy)                                            # ... select many (no decoding)
    prepared.generate(kvcrush.make_policy("snapkv", budget=0.5))       # ... or decode from any policy
"""

from kvcrush.budget import parse_budget, resolve_budget
from kvcrush.crush import anchor, block_signatures, buckets, hamming, representatives, signatures
from kvcrush.errors import (
    BudgetError,
    DataUnavailableError,
    KVCrushError,
    ModelError,
    PolicyError,
    PromptError,
    ResourceError,
    RunCancelled,
)
from kvcrush.generate import generate, generate_encoded
from kvcrush.kvcache import cache_bytes
from kvcrush.models import LoadedModel, load_model
from kvcrush.policies import BASE_CHOICES, POLICIES, Policy, make_policy
from kvcrush.policies.options import OptionSpec, declared_options
from kvcrush.prepared import PreparedPrompt, prepare, prepare_encoded
from kvcrush.prompts import encode_prompt
from kvcrush.trace import GenerationResult, LayerTrace, RunTrace, Timings

__all__ = [
    "anchor", "block_signatures", "buckets", "hamming", "representatives", "signatures",
    "parse_budget", "resolve_budget", "generate", "generate_encoded", "cache_bytes", "RunCancelled",
    "prepare", "prepare_encoded", "PreparedPrompt", "OptionSpec", "declared_options",
    "load_model", "LoadedModel",
    "make_policy", "Policy", "POLICIES", "BASE_CHOICES", "encode_prompt",
    "GenerationResult", "LayerTrace", "RunTrace", "Timings",
    "KVCrushError", "BudgetError", "PolicyError", "PromptError", "ModelError", "DataUnavailableError",
    "ResourceError",
]
