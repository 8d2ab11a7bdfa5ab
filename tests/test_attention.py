"""Recomputed attention (what the policies score with) equals the model's own attention weights."""

import pytest
import torch

from kvcrush.attention import accumulated_attention, attention_probs, window_attention
from tests.conftest import capture_layer_inputs


@pytest.fixture(scope="module")
def captured(tiny_lm):
    ids = torch.randint(0, 1000, (1, 97), generator=torch.Generator().manual_seed(0))
    return capture_layer_inputs(tiny_lm, ids)


def test_attention_probs_match_eager_weights(captured):
    layers, attentions = captured
    for layer, reference in zip(layers, attentions, strict=True):
        ours = attention_probs(layer, 0, layer.n_total)
        torch.testing.assert_close(ours, reference[0].float(), atol=1e-5, rtol=1e-4)


def test_window_attention_is_mean_over_window_queries(captured):
    layers, attentions = captured
    layer, reference = layers[1], attentions[1][0].float()
    torch.testing.assert_close(window_attention(layer, 90, 97), reference[:, 90:97].mean(dim=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [7, 32, 500])
def test_accumulated_attention_equals_column_sums_for_any_chunk(captured, chunk):
    layers, attentions = captured
    layer, reference = layers[0], attentions[0][0].float()
    torch.testing.assert_close(accumulated_attention(layer, chunk), reference.sum(dim=1), atol=1e-4, rtol=1e-4)
