"""KVCrush building blocks: binary head signatures, anchors, Hamming distances, representatives.

Jha, Gobriel, Talamanova, Jain, "KVCrush: Key value cache size-reduction using similarity in
head-behaviour" (2025). Each token is summarised by one bit per attention head (does this head find
the token important?); evicted tokens are ordered by the Hamming distance of their bit vector to an
anchor vector, and evenly spaced picks along that order stand in for groups of similar tokens.

Everything here is pure torch on small tensors: O(M * H) for bits and distances plus one sort.
"""

from __future__ import annotations

import torch

from kvcrush.errors import PolicyError

ANCHOR_MODES = ("random", "zeros", "ones", "mean", "alternating")


def stable_top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest entries of each row, ties broken by lower index.

    scores: `[rows, n]` float. Returns `[rows, k]` long, in rank order (best first).
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return order[..., :k]


def signatures(scores: torch.Tensor) -> torch.Tensor:
    """Binary head signatures (spec section 3, step 4).

    scores: `[heads, M]` importance of each of the M middle tokens for each head.
    Returns `[M, heads]` bool: bit `[t, h]` is set iff token t is among the top `floor(M / 2)` of head h
    (ties: lower index wins).
    """
    if scores.dim() != 2:
        raise ValueError(f"signatures expects scores [heads, M], got shape {tuple(scores.shape)}")
    heads, m = scores.shape
    half = m // 2
    if half == 0:
        return torch.zeros(m, heads, dtype=torch.bool, device=scores.device)
    scores = scores.float()
    if bool(torch.isnan(scores).any()):  # sorts rank NaN above everything; keep exactly that order
        bits = torch.zeros(heads, m, dtype=torch.bool, device=scores.device)
        bits.scatter_(1, stable_top_indices(scores, half), True)
        return bits.T.contiguous()
    # A selection instead of a sort: everything above the half-th largest score, then as many of the
    # tokens tied with it as are still needed, lowest index first (what a stable sort would pick).
    threshold = torch.kthvalue(scores, m - half + 1, dim=-1, keepdim=True).values
    above = scores > threshold
    ties = scores == threshold
    missing = half - above.sum(dim=-1, keepdim=True)
    bits = above | (ties & (ties.cumsum(dim=-1) <= missing))
    return bits.T.contiguous()


def anchor(bits: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """The reference vector that evicted tokens are compared with (spec section 3, step 5).

    bits: `[n, width]` bool signatures. Returns `[width]` bool.
    `random`: seeded uniform bits; `zeros`/`ones`: constant; `mean`: bit h is set iff the mean of
    column h is strictly above 0.5; `alternating`: 0, 1, 0, 1, ...
    """
    if bits.dim() != 2:
        raise ValueError(f"anchor expects bits [n, width], got shape {tuple(bits.shape)}")
    width = bits.shape[1]
    device = bits.device
    if mode == "zeros":
        return torch.zeros(width, dtype=torch.bool, device=device)
    if mode == "ones":
        return torch.ones(width, dtype=torch.bool, device=device)
    if mode == "alternating":
        return (torch.arange(width, device=device) % 2).bool()
    if mode == "mean":
        if bits.shape[0] == 0:
            return torch.zeros(width, dtype=torch.bool, device=device)
        return bits.float().mean(dim=0) > 0.5
    if mode == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, 2, (width,), generator=generator).bool().to(device)
    raise PolicyError(f"Unknown anchor mode {mode!r}; choose one of {', '.join(ANCHOR_MODES)}.")


def hamming(bits: torch.Tensor, anchor_bits: torch.Tensor) -> torch.Tensor:
    """Hamming distance of each row to the anchor (spec section 3, step 6).

    bits: `[n, width]` bool, anchor_bits: `[width]` bool. Returns `[n]` int64.
    """
    if bits.shape[-1] != anchor_bits.shape[-1]:
        raise ValueError(f"bits have width {bits.shape[-1]} but the anchor has {anchor_bits.shape[-1]}")
    return (bits ^ anchor_bits).sum(dim=-1, dtype=torch.int64)


def _order_by_distance(distances: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidates sorted by `(distance, index)` ascending."""
    candidates = candidates.to(torch.int64).sort().values
    keys = distances[candidates]
    return candidates[torch.argsort(keys, stable=True)]


def group(distances: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Representatives and the buckets they stand in for, from one sort (spec section 3, step 7).

    distances: `[n]` int for all items; candidates: indices into it (the evicted set F); k: how many
    to keep. Sorts F by `(d, index)`, `k' = min(|F|, k)`, `step = floor(|F| / k')`; representative i is
    `F[i * step]` and its bucket `F[i * step : (i + 1) * step]`, the last bucket also taking the
    `|F| mod k'` leftovers so every candidate belongs to one group. Returns (`[k']` picks in pick
    order, k' buckets as views of one tensor).
    """
    ordered = _order_by_distance(distances, torch.as_tensor(candidates, device=distances.device))
    count = min(int(ordered.numel()), max(int(k), 0))
    if count == 0:
        return ordered[:0], []
    step = ordered.numel() // count
    picks = ordered[: count * step : step]
    sizes = [step] * (count - 1) + [ordered.numel() - (count - 1) * step]
    return picks, list(torch.split(ordered, sizes))


def representatives(distances: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Evenly spaced picks along the distance order: `F[i * step]` for `i < min(|F|, k)` (see `group`)."""
    return group(distances, candidates, k)[0]


def buckets(distances: torch.Tensor, candidates: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The groups each representative stands in for: `F[i * step : (i + 1) * step]` (see `group`)."""
    return group(distances, candidates, k)[1]


def block_signatures(token_bits: torch.Tensor, block_size: int) -> torch.Tensor:
    """Concatenate the bits of consecutive tokens into block signatures (spec section 4).

    token_bits: `[n_blocks * block_size, heads]` bool. Returns `[n_blocks, block_size * heads]`,
    token-major (all heads of the block's first token, then the second token, ...).
    """
    n_tokens, heads = token_bits.shape
    if n_tokens % block_size:
        raise ValueError(f"{n_tokens} tokens do not split into blocks of {block_size}")
    return token_bits.reshape(n_tokens // block_size, block_size * heads)
