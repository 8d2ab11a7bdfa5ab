"""Helpers for the robustness suite: a score-supplying policy, a minimal layer, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kvcrush.attention import LayerInputs
from tests.policies.helpers import GivenScores

ROOT = Path(__file__).resolve().parents[2]


# The score-supplying policy is the policy tests' own; one definition serves both suites.
FixedScores = GivenScores


def make_layer(n_tokens: int, kv_heads: int, query_heads: int) -> LayerInputs:
    """A real `LayerInputs` over small tensors; the module only needs `config.num_attention_heads`."""
    module = SimpleNamespace(config=SimpleNamespace(num_attention_heads=query_heads))
    keys = torch.zeros(1, kv_heads, n_tokens, 2)
    return LayerInputs(
        module=module, layer_idx=0, n_layers=1, hidden_states=torch.zeros(1, n_tokens, 4), keys=keys,
        values=keys.clone(), cos=torch.ones(1, n_tokens, 2), sin=torch.zeros(1, n_tokens, 2),
        n_context=n_tokens, window_start=n_tokens, query_aware=False,
    )


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m kvcrush ARGS` in a subprocess (argument list, never a shell)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kvcrush", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


@pytest.fixture(scope="session")
def short_context_lm():
    """random:tiny with only 512 positions, so an over-long prompt is cheap to build."""
    import kvcrush

    return kvcrush.load_model("random:tiny", device="cpu", max_position_embeddings=512)
