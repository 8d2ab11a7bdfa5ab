"""KVCrush Explorer: KV-cache eviction policies, KVCrush, and a trace of every decision.

    import kvcrush
    lm = kvcrush.load_model()                       # packaged SmolLM2-135M-Instruct
    policy = kvcrush.make_policy("kvcrush", budget=0.25, base="snapkv")
    result = kvcrush.generate(lm, text, policy, question="What is ...?")
    result.text, result.kv_bytes_before, result.kv_bytes_after, result.trace.layers[0].kept
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
)
from kvcrush.generate import RunCancelled, generate, generate_encoded, kv_bytes
from kvcrush.models import LoadedModel, load_model
from kvcrush.policies import BASE_CHOICES, POLICIES, Policy, make_policy
from kvcrush.prompts import encode_prompt
from kvcrush.trace import GenerationResult, LayerTrace, RunTrace, Timings

__all__ = [
    "anchor", "block_signatures", "buckets", "hamming", "representatives", "signatures",
    "parse_budget", "resolve_budget", "generate", "generate_encoded", "kv_bytes", "RunCancelled",
    "load_model", "LoadedModel",
    "make_policy", "Policy", "POLICIES", "BASE_CHOICES", "encode_prompt",
    "GenerationResult", "LayerTrace", "RunTrace", "Timings",
    "KVCrushError", "BudgetError", "PolicyError", "PromptError", "ModelError", "DataUnavailableError",
]
