"""Real selections of the tiny random model over many policy settings, shared by the explanation tests."""

from __future__ import annotations

import pytest

import kvcrush

QUESTION = "Who wrote this essay?"

# (policy, budget, options): token and block level, every anchor mode and the multi-anchor variants, a
# spilled split (fewer candidates than representatives), other bases, head_reduction="all", PyramidKV.
CASES = [
    ("kvcrush", 0.3, {}),
    ("kvcrush", 0.3, {"anchor": "mean"}),
    ("kvcrush", 0.3, {"anchor": "random", "seed": 3}),
    ("kvcrush", 0.3, {"anchor": "zeros", "signature_heads": "kv"}),
    ("kvcrush", 0.3, {"granularity": "block", "block_size": 8}),
    ("kvcrush", 0.4, {"granularity": "block", "block_size": 5, "anchor": "ones", "sink": 3}),
    ("kvcrush", 0.3, {"anchors": 3}),
    ("kvcrush", 0.3, {"anchors": 4, "anchor_mode": "kmeans"}),
    ("kvcrush", 0.3, {"anchors": 3, "anchor_mode": "kmeans", "granularity": "block", "block_size": 8}),
    ("kvcrush", 0.3, {"representative": "best"}),
    ("kvcrush", 0.9, {"crush_fraction": 0.8}),
    ("kvcrush", 0.9, {"crush_fraction": 0.8, "granularity": "block", "block_size": 4}),
    ("kvcrush", 0.3, {"base": "h2o", "head_reduction": "all"}),
    ("kvcrush", 0.3, {"base": "tova", "split": "adaptive"}),
    # Quantized storage under a budget in bytes: representatives at 2 bits leave bytes that buy importance rows
    # back at their own rate (the cut-off the explainer reads is the one the selection used).
    ("kvcrush", 0.3, {"kv_bits": 8, "representative_bits": 2, "budget_bytes": 20000}),
    ("kvcrush", 0.3, {"kv_bits": 8, "representative_bits": 2, "budget_bytes": 20000, "granularity": "block",
                      "block_size": 4}),
    ("kvcrush", 0.3, {"kv_bits": 4, "representative_bits": 2, "merge": "values"}),
    ("snapkv", 0.3, {}),
    ("pyramidkv", 0.3, {}),
    ("streaming", 0.3, {}),
    ("h2o", 0.2, {}),
]
IDS = [f"{name}-{budget}-" + "-".join(f"{k}={v}" for k, v in options.items()) for name, budget, options in CASES]


@pytest.fixture(scope="module", params=[False, True], ids=["agnostic", "aware"])
def prepared(request, tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt, question=QUESTION, query_aware=request.param)


@pytest.fixture(params=CASES, ids=IDS)
def trace(request, prepared):
    name, budget, options = request.param
    return prepared.select(kvcrush.make_policy(name, budget, **options))
