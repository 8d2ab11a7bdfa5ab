"""Quality and overlap measures shared by the app and the benchmark."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np
import torch

from kvcrush.trace import LayerTrace, RunTrace


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (Rajpurkar et al., 2016): lower case, no punctuation/articles."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 between two answers after normalisation (SQuAD's metric)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains_answer(prediction: str, answer: str) -> bool:
    """Needle retrieval: the exact value string appears in the generated text."""
    return answer.strip() in prediction


def token_agreement(ids: list[int], reference_ids: list[int]) -> float:
    """Share of positions where two greedy generations agree, over the reference's length."""
    if not reference_ids:
        return 1.0 if not ids else 0.0
    same = sum(1 for a, b in zip(ids, reference_ids, strict=False) if a == b)
    return same / len(reference_ids)


def kept_jaccard(a: LayerTrace, b: LayerTrace) -> float:
    """Mean over KV heads of |A ∩ B| / |A ∪ B| for two traces of the same layer and prompt."""
    scores = []
    for head in range(a.kept.shape[0]):
        left, right = set(a.kept[head].tolist()), set(b.kept[head].tolist())
        union = left | right
        scores.append(len(left & right) / len(union) if union else 1.0)
    return sum(scores) / len(scores)


def kept_mask(trace: LayerTrace) -> torch.Tensor:
    """`[kv_heads, n_tokens]` bool: which context tokens each head keeps."""
    mask = torch.zeros(trace.kept.shape[0], trace.n_tokens, dtype=torch.bool)
    mask.scatter_(1, trace.kept.long(), True)
    return mask


def head_agreement(trace: RunTrace) -> tuple[np.ndarray, np.ndarray]:
    """Per layer and KV head (`[layers, kv_heads]` each): the share of context tokens the head keeps, and the mean
    Jaccard similarity |A ∩ B| / |A ∪ B| of its kept set with every other head's (1 with a single head, and
    for two empty sets)."""
    kept, agreement = [], []
    for layer in trace.layers:
        mask = kept_mask(layer).float()
        heads = mask.shape[0]
        kept.append((mask.sum(dim=1) / max(layer.n_tokens, 1)).numpy())
        inter = mask @ mask.T
        sizes = mask.sum(dim=1)
        union = sizes[:, None] + sizes[None, :] - inter
        jaccard = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        agreement.append(((jaccard.sum(dim=1) - 1) / (heads - 1)).numpy() if heads > 1 else np.ones(1))
    return np.stack(kept), np.stack(agreement)

