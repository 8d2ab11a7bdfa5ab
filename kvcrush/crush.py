"""KVCrush building blocks: binary head signatures, anchors, Hamming distances, representatives.

Jha, Gobriel, Talamanova, Jain, "KVCrush: Key value cache size-reduction using similarity in
head-behaviour" (2025). Each token is summarised by one bit per attention head (does this head find
the token important?); evicted tokens are ordered by the Hamming distance of their bit vector to an
anchor vector, and evenly spaced picks along that order stand in for groups of similar tokens.

Everything here is pure torch on small tensors: O(M * H) for bits and distances plus one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.errors import PolicyError

ANCHOR_MODES = ("random", "zeros", "ones", "mean", "alternating")
# Beyond the paper (spec section 7): several anchors at once.
ANCHOR_SET_MODES = ("fixed", "kmeans")
FIXED_ANCHOR_ORDER = ("zeros", "ones", "alternating", "mean", "random")  # anchors after the first, in this order
MAX_ANCHORS = 8
KMEANS_ITERATIONS = 10


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
    return batched_signatures(scores[None])[0]


def _rank_keys(scores: torch.Tensor) -> torch.Tensor:
    """float64 keys whose order is a descending sort's order of `scores`, NaN included: torch's sorts rank NaN
    above +inf, so NaN becomes +inf and +inf the largest finite float64 (every float32 stays exact)."""
    keys = scores.double()
    keys = torch.where(keys == float("inf"), torch.finfo(torch.float64).max, keys)
    return torch.where(torch.isnan(keys), float("inf"), keys)


def batched_signatures(scores: torch.Tensor) -> torch.Tensor:
    """`signatures` of several layers at once: `[layers, heads, M]` float -> `[layers, M, heads]` bool.

    A selection instead of a sort: everything above the half-th largest score, then as many of the
    tokens tied with it as are still needed, lowest index first (what a stable sort would pick; NaN ranks
    first, as sorts rank it). No host sync, whatever the scores hold.
    """
    layers, heads, m = scores.shape
    half = m // 2
    if half == 0:
        return torch.zeros(layers, m, heads, dtype=torch.bool, device=scores.device)
    keys = _rank_keys(scores)
    threshold = torch.kthvalue(keys, m - half + 1, dim=-1, keepdim=True).values
    above = keys > threshold
    ties = keys == threshold
    missing = half - above.sum(dim=-1, keepdim=True)
    bits = above | (ties & (ties.cumsum(dim=-1) <= missing))
    return bits.transpose(1, 2).contiguous()


def batched_anchor(bits: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """`anchor` of several layers at once: bits `[layers, n, width]` -> `[layers, width]` bool."""
    if mode == "mean":
        if bits.shape[1] == 0:
            return torch.zeros(bits.shape[0], bits.shape[2], dtype=torch.bool, device=bits.device)
        return bits.float().mean(dim=1) > 0.5
    return anchor(bits[0], mode, seed).expand(bits.shape[0], -1)


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
        return _random_bits(width, int(seed), device)
    raise PolicyError(f"Unknown anchor mode {mode!r}; choose one of {', '.join(ANCHOR_MODES)}.")


_RANDOM_ANCHORS: dict[tuple[int, int, str], torch.Tensor] = {}


def _random_bits(width: int, seed: int, device: torch.device) -> torch.Tensor:
    """Seeded uniform bits, drawn on the CPU (the same on every device) and copied to `device` once per process:
    a copy to a GPU waits for it, and every layer asks for the same anchor."""
    key = (width, seed, str(device))
    if key not in _RANDOM_ANCHORS:
        generator = torch.Generator().manual_seed(seed)
        _RANDOM_ANCHORS[key] = torch.randint(0, 2, (width,), generator=generator, device="cpu").bool().to(device)
    return _RANDOM_ANCHORS[key]


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


def _spaced(ordered: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step 7 on an already ordered `F`: `F[i * step]` and buckets `F[i * step : (i + 1) * step]` (see `group`)."""
    count = min(int(ordered.numel()), max(int(k), 0))
    if count == 0:
        return ordered[:0], []
    step = ordered.numel() // count
    picks = ordered[: count * step : step]
    return picks, list(torch.split(ordered, bucket_sizes(ordered.numel(), count)))


def bucket_sizes(n: int, k: int) -> list[int]:
    """Step 7's bucket sizes for `n` ordered candidates and `0 < k <= n` picks: `k - 1` buckets of
    `floor(n / k)`, the last one also taking the `n mod k` leftovers."""
    step = n // k
    return [step] * (k - 1) + [n - (k - 1) * step]


def group(distances: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Representatives and the buckets they stand in for, from one sort (spec section 3, step 7).

    distances: `[n]` int for all items; candidates: indices into it (the evicted set F); k: how many
    to keep. Sorts F by `(d, index)`, `k' = min(|F|, k)`, `step = floor(|F| / k')`; representative i is
    `F[i * step]` and its bucket `F[i * step : (i + 1) * step]`, the last bucket also taking the
    `|F| mod k'` leftovers so every candidate belongs to one group. Returns (`[k']` picks in pick
    order, k' buckets as views of one tensor).
    """
    return _spaced(_order_by_distance(distances, torch.as_tensor(candidates, device=distances.device)), k)


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


# --- Beyond the paper (spec section 7) ---------------------------------------------------------------
# Several anchors: the KVCrush paper's future work. Best-scored representatives, an adaptive split and
# value merging are this project's options; the merge follows CaM (Zhang et al. 2024, "CaM: Cache
# Merging for Memory-efficient LLMs Inference") and D2O (Wan et al. 2024, "D2O: Dynamic Discriminative
# Operations for Efficient Generative Inference of LLMs"), which fold evicted entries into kept ones.


def fixed_anchors(bits: torch.Tensor, k: int, first: str = "alternating", seed: int = 0) -> torch.Tensor:
    """`k` anchors of fixed modes (spec section 7, `anchor_mode="fixed"`).

    bits: `[n, width]` bool signatures of every middle unit (the `mean` anchor reads them all, as in
    step 5). The first anchor is `first`'s mode, the next ones the other modes in the order zeros, ones,
    alternating, mean, random (skipping `first`). There are five modes; anchors beyond the fifth are
    more `random` ones, seeded `seed + 1`, `seed + 2`, ... Returns `[k, width]` bool.
    """
    if not 1 <= int(k) <= MAX_ANCHORS:
        raise PolicyError(f"anchors must be between 1 and {MAX_ANCHORS}, got {k}.")
    modes = [first] + [mode for mode in FIXED_ANCHOR_ORDER if mode != first]
    rows = [anchor(bits, modes[i], seed) if i < len(modes) else anchor(bits, "random", seed + i - len(modes) + 1)
            for i in range(int(k))]
    return torch.stack(rows)


def nearest_anchor(bits: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest anchor by Hamming distance (spec section 7; ties: the lower anchor index).

    bits: `[n, width]` bool, anchors: `[k, width]` bool. Returns (`[n]` anchor ids, `[n]` distances),
    both int64; with one anchor the distances are exactly `hamming(bits, anchors[0])`.
    """
    if bits.shape[-1] != anchors.shape[-1]:
        raise ValueError(f"bits have width {bits.shape[-1]} but the anchors have {anchors.shape[-1]}")
    distances = (bits[:, None, :] ^ anchors[None, :, :]).sum(dim=-1, dtype=torch.int64)  # [n, k]
    if anchors.shape[0] == 1:
        return torch.zeros(bits.shape[0], dtype=torch.int64, device=bits.device), distances[:, 0]
    nearest, ids = distances.min(dim=1)  # torch.min returns the first minimum: the lower anchor index
    return ids, nearest


def kmeans_anchors(points: torch.Tensor, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """`k` centroids of a seeded k-means over binary signatures (spec section 7, `anchor_mode="kmeans"`).

    points: `[n, width]` bool (the candidates' signatures). Hamming distance; a centroid's bit is set
    iff strictly more than half of its members have it (majority vote; a tie gives 0, as the `mean`
    anchor). Initial centroids: `k` of the distinct signatures (in `torch.unique`'s sorted order) in a
    seeded random order (so identical signatures never take two centroids); with fewer distinct
    signatures than `k` they repeat, and a repeated centroid keeps an empty cluster (ties go to the lower
    index). An empty cluster keeps its centroid. Exactly `iterations` rounds (no data-dependent stop);
    deterministic for a seed. No points: `k` all-zero centroids. Returns `[k, width]` bool.

    One layer alone reads its number of distinct signatures on the host here; a selection over many layers
    reads every layer's at once (`distinct_signatures`, `kmeans_seeds`, `kmeans_from`).
    """
    valid = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    distinct = distinct_signatures(points, valid)
    seeds = kmeans_seeds(int(distinct.count), int(k), seed).to(points.device)
    return kmeans_from(points, valid, distinct, seeds, iterations)


@dataclass
class DistinctSignatures:
    """The valid rows of `[n, width]` bool signatures in lexicographic order (`torch.unique(dim=0)`'s order).

    order: `[n]` row ids, valid rows first, sorted. first: `[n]` bool, set where `order[i]` starts a new
    distinct valid row. count: 0-d int64 on the device, how many distinct valid rows (read it on the host
    together with other layers' counts).
    """

    order: torch.Tensor
    first: torch.Tensor
    count: torch.Tensor


_WORD_BITS = 62  # bits per int64 word when packing signatures (the sign bit stays clear)


def distinct_signatures(bits: torch.Tensor, valid: torch.Tensor) -> DistinctSignatures:
    """Sort the `valid` rows of `bits` `[n, width]` as `torch.unique(bits[valid], dim=0)` does, without
    reading anything on the host: rows are packed into int64 words (first column most significant) and
    sorted word by word with stable sorts, last word first."""
    n, width = bits.shape
    device = bits.device
    words = -(-width // _WORD_BITS) if width else 0
    padded = torch.zeros(n, words * _WORD_BITS, dtype=torch.int64, device=device)
    padded[:, :width] = bits.long()
    shifts = torch.arange(_WORD_BITS - 1, -1, -1, device=device)
    packed = (padded.view(n, words, _WORD_BITS) << shifts).sum(dim=-1)  # [n, words]
    order = torch.arange(n, device=device)
    for word in range(words - 1, -1, -1):
        order = order[torch.argsort(packed[order, word], stable=True)]
    order = order[torch.argsort((~valid[order]).to(torch.uint8), stable=True)]
    rows = packed[order]
    change = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        change[1:] = (rows[1:] != rows[:-1]).any(dim=-1)
    first = change & valid[order]
    return DistinctSignatures(order, first, first.sum())


def kmeans_seeds(n_distinct: int, k: int, seed: int) -> torch.Tensor:
    """Which distinct signatures start the k-means (`kmeans_anchors`): `[k]` int64 ranks on the CPU."""
    if n_distinct == 0:
        return torch.zeros(k, dtype=torch.int64, device="cpu")
    order = torch.randperm(n_distinct, generator=torch.Generator().manual_seed(int(seed)), device="cpu")
    return order[torch.arange(k, device="cpu") % n_distinct]


def kmeans_from(bits: torch.Tensor, valid: torch.Tensor, distinct: DistinctSignatures, seeds: torch.Tensor,
                iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """`kmeans_anchors` over the `valid` rows of `bits` `[n, width]`, started from the distinct rows ranked
    `seeds` (`[k]` on the device, `kmeans_seeds`): `[k, width]` bool, with no host sync. Rows that are not
    valid take no part (weight 0). Without valid rows: all-zero centroids."""
    k, width = int(seeds.shape[0]), bits.shape[1]
    ranks = distinct.first.long().cumsum(dim=0)  # the j-th distinct row sits where the running count reaches j + 1
    position = torch.searchsorted(ranks, seeds + 1).clamp_max(max(bits.shape[0] - 1, 0))
    if bits.shape[0] == 0:
        return torch.zeros(k, width, dtype=torch.bool, device=bits.device)
    centroids = bits[distinct.order[position]] & (distinct.count > 0)
    weight = valid.to(torch.float32)
    values = bits.float() * weight[:, None]
    for _ in range(int(iterations)):
        ids, _ = nearest_anchor(bits, centroids)
        counts = torch.zeros(k, device=bits.device).index_add_(0, ids, weight)[:, None]
        ones = torch.zeros(k, width, device=bits.device).index_add_(0, ids, values)
        centroids = torch.where(counts > 0, ones * 2 > counts, centroids)
    return centroids


def anchor_set(bits: torch.Tensor, mode: str, k: int, seed: int = 0, first: str = "alternating",
               candidates: torch.Tensor | None = None) -> torch.Tensor:
    """The anchors units are grouped around (spec section 7): `[k, width]` bool.

    bits: `[n, width]` every middle unit's signature. `mode="fixed"`: `fixed_anchors(bits, k, first,
    seed)` (with `k = 1` exactly step 5's single anchor). `"kmeans"`: `kmeans_anchors` over the
    candidates' signatures `bits[candidates]` (all units when `candidates` is None).
    """
    if mode == "fixed":
        return fixed_anchors(bits, k, first, seed)
    if mode == "kmeans":
        points = bits if candidates is None else bits[torch.as_tensor(candidates, device=bits.device).long()]
        return kmeans_anchors(points, int(k), seed)
    raise PolicyError(f"Unknown anchor_mode {mode!r}; choose one of {', '.join(ANCHOR_SET_MODES)}.")


def share_out(sizes: list[int], total: int) -> list[int]:
    """How many of `total` representatives each group gets (spec section 7): largest remainders.

    sizes: `n_g` per group. Group g's quota is `total * n_g / sum(n)`; each gets the floor of its quota
    and the `total - sum(floors)` left go one each to the largest fractional parts (ties: the lower
    group index), so the shares sum to `total`. `total` is first capped at `sum(n)` (step 8: budget
    the candidates cannot use returns to the importance part). Capped so, a quota never exceeds its
    group (`total * n_g / sum(n) <= n_g`) and a rounded-up one neither (`n_g` is whole), so nothing
    needs redistributing; should a share ever exceed its group, the excess is shared out again in
    proportion to the groups with room (a loop kept for safety). Exact integer arithmetic.
    """
    sizes = [max(int(n), 0) for n in sizes]
    remaining = min(max(int(total), 0), sum(sizes))
    shares = [0] * len(sizes)
    while remaining > 0:
        room = [n - s for n, s in zip(sizes, shares, strict=True)]
        weight = sum(room)
        floors = [remaining * r // weight for r in room]
        left = remaining - sum(floors)
        by_remainder = sorted(range(len(room)), key=lambda g: (-(remaining * room[g] % weight), g))
        for g in by_remainder[:left]:
            floors[g] += 1
        given = [min(f, r) for f, r in zip(floors, room, strict=True)]
        shares = [s + g for s, g in zip(shares, given, strict=True)]
        remaining -= sum(given)
    return shares


def group_by_anchor(distances: torch.Tensor, unit_anchor: torch.Tensor, candidates: torch.Tensor, k: int,
                    n_anchors: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Step 7 within each anchor's group (spec section 7, several anchors).

    distances: `[n]` each unit's distance to its nearest anchor; unit_anchor: `[n]` that anchor's id;
    candidates: the evicted set F; k: `T_crush`. Group g (the candidates nearest anchor g, `n_g` of them)
    gets `share_out(n, k)[g]` representatives, evenly spaced along its `(distance, index)` order exactly
    as step 7 does over F; a group given none has no bucket (its candidates go without a stand-in).
    With one anchor this is `group(distances, candidates, k)`. Returns (`[k']` picks, group by group,
    their buckets, `[k']` int64 anchor id of each bucket).

    One layer alone: the group sizes are read on the host here (a selection over many layers reads every
    layer's at once and calls `order_candidates` and `spaced_groups` itself).
    """
    candidates = torch.as_tensor(candidates, device=distances.device).long()
    candidate = torch.zeros(distances.shape[0], dtype=torch.bool, device=distances.device)
    candidate[candidates] = True
    ordered = order_candidates(distances, candidate, unit_anchor if n_anchors > 1 else None)[: candidates.numel()]
    sizes = [int(candidates.numel())] if n_anchors == 1 else group_sizes(unit_anchor, candidate, n_anchors).tolist()
    picks, buckets_, _, owners = spaced_groups(ordered, sizes, share_out(sizes, k))
    return picks, buckets_, torch.tensor(owners, dtype=torch.int64)


def group_sizes(unit_anchor: torch.Tensor, candidate: torch.Tensor, n_anchors: int) -> torch.Tensor:
    """`[n_anchors]` int64: how many candidates (`candidate` `[n]` bool) each anchor is nearest to (on the device;
    `bincount` would read its maximum on the host)."""
    return torch.zeros(n_anchors, dtype=torch.int64, device=unit_anchor.device).index_add_(
        0, unit_anchor, candidate.long())


def order_candidates(distances: torch.Tensor, candidate: torch.Tensor,
                     unit_anchor: torch.Tensor | None = None) -> torch.Tensor:
    """`[n]` unit ids: the candidates (`candidate` `[n]` bool) by `(anchor, distance, index)` (no anchor: by
    `(distance, index)`), then every other unit. Three stable sorts, no host sync; the first `|F|` are F."""
    order = torch.argsort(distances, stable=True)
    if unit_anchor is not None:
        order = order[torch.argsort(unit_anchor[order], stable=True)]
    return order[torch.argsort((~candidate[order]).to(torch.uint8), stable=True)]


def spaced_groups(ordered: torch.Tensor, sizes: list[int], shares: list[int]
                  ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[int]]:
    """Step 7 in each group of an ordered candidate list, from host counts alone (no host sync).

    ordered: the candidates, group by group (`order_candidates`); sizes: `n_g` per group; shares: its
    representatives (`share_out`). Group g's picks are its `i * step`-th members, its buckets
    `[i * step, (i + 1) * step)` (the last one also taking the leftovers), as `group` does over F.
    Returns (picks, buckets as views, `[P]` bucket index of every bucket member in `torch.cat(buckets)`
    order, the group of each bucket).
    """
    picks: list[torch.Tensor] = []
    buckets_: list[torch.Tensor] = []
    segments: list[torch.Tensor] = []
    owners: list[int] = []
    start = 0
    for g, (n, share) in enumerate(zip(sizes, shares, strict=True)):
        members = ordered[start : start + n]
        start += n
        count = min(n, max(int(share), 0))
        if count == 0:
            continue
        step = n // count
        picks.append(members[: count * step : step])
        buckets_.extend(torch.split(members, bucket_sizes(n, count)))
        within = torch.arange(n, device=ordered.device) // step
        segments.append(within.clamp_max(count - 1) + len(owners))
        owners.extend([g] * count)
    if not picks:
        return ordered[:0], [], torch.zeros(0, dtype=torch.int64, device=ordered.device), []
    return torch.cat(picks), buckets_, torch.cat(segments), owners


def _segments(groups: list[torch.Tensor], device: torch.device, segment: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All members joined `[P]`, each member's group index `[P]` (`segment`, or made from the sizes on the CPU
    and copied), and the group sizes."""
    sizes = [int(g.numel()) for g in groups]
    if segment is None:
        segment = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(sizes, dtype=torch.int64),
                                          output_size=sum(sizes)).to(device)
    return torch.cat(groups).long(), segment, sizes


def best_in_buckets(groups: list[torch.Tensor], unit_scores: torch.Tensor,
                    segment: torch.Tensor | None = None) -> torch.Tensor:
    """Each bucket's member with the highest score (spec section 7, `representative="best"`).

    groups: the buckets (unit ids); unit_scores: `[units]` (the base scores' mean over KV heads).
    segment: `[P]` each member's bucket (`spaced_groups`; None: built from the bucket sizes, on the CPU).
    Ties: the lower unit id. NaN counts as the lowest score. Returns `[len(groups)]` int64, bucket order.
    """
    if not groups:
        return torch.zeros(0, dtype=torch.int64, device=unit_scores.device)
    members, segment, _ = _segments(groups, unit_scores.device, segment)
    scores = torch.nan_to_num(unit_scores[members].float(), nan=float("-inf"))
    count = len(groups)
    best = torch.full((count,), float("-inf"), device=scores.device).scatter_reduce(0, segment, scores, "amax")
    outside = torch.iinfo(torch.int64).max
    index = torch.where(scores == best[segment], members, torch.full_like(members, outside))
    return torch.full((count,), outside, dtype=torch.int64, device=scores.device).scatter_reduce(
        0, segment, index, "amin")


def merge_weights(groups: list[torch.Tensor], unit_scores: torch.Tensor,
                  segment: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """Softmax of the members' base scores inside each bucket, per KV head (spec section 7, `merge="values"`).

    groups: the buckets (unit ids, the representative among them); unit_scores: `[heads, units]` base
    scores (block scores at block level). Temperature 1 on the base's own scale, so the weights are as
    peaked as the base's scores are spread. NaN and -inf scores count as the lowest finite score (a
    bucket of them only is averaged evenly). Returns (`[heads, P]` float32 weights of every member,
    buckets joined in order, each bucket's columns summing to 1; the bucket sizes, to split them).
    segment: as in `best_in_buckets`.
    """
    heads = unit_scores.shape[0]
    if not groups:
        return torch.zeros(heads, 0, device=unit_scores.device), []
    members, segment, sizes = _segments(groups, unit_scores.device, segment)
    lowest = torch.finfo(torch.float32).min
    scores = torch.nan_to_num(unit_scores[:, members].float(), nan=lowest, neginf=lowest)
    index = segment.expand(heads, -1)
    peak = torch.full((heads, len(groups)), lowest, device=scores.device).scatter_reduce(1, index, scores, "amax")
    weights = torch.exp(scores - peak.gather(1, index))
    total = torch.zeros(heads, len(groups), device=scores.device).index_add_(1, segment, weights)
    return weights / total.gather(1, index), sizes


def top_share(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the score mass that each row's top `k` hold, over all rows (spec section 7, adaptive split).

    scores: `[heads, M]` base scores of the middle. Each row is made non-negative by subtracting its
    minimum; the result is `sum_h top-k sum of row h / sum_h sum of row h` as a 0-d float32 tensor (no
    host sync). All-equal scores carry no mass: their share is then `k / M`, what an even spread gives.
    """
    m = scores.shape[-1]
    if m == 0:
        return torch.zeros((), device=scores.device)
    values = scores.float()
    values = torch.nan_to_num(values - values.min(dim=-1, keepdim=True).values, nan=0.0)
    total = values.sum()
    top = values.topk(min(max(int(k), 0), m), dim=-1).values.sum()
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float32).tiny), min(max(k, 0), m) / m)


def adaptive_fractions(crush_fraction: float, spreads: list[float | None], ceiling: float = 0.9) -> list[float]:
    """Per-layer crush fractions from each layer's `1 - c` (spec section 7, `split="adaptive"`).

    spreads: `1 - c` per layer, `c` the top `T_imp` tokens' share of the layer's score mass (`top_share`);
    None for layers without a split (no-op, no middle), which keep `crush_fraction` and stay out of the
    mean. Layer l gets `crush_fraction * spread_l / mean(spread)`, clipped to `[0, ceiling]`: layers whose
    importance part already holds most of the mass give more budget to representatives. Without any
    spread (no layer, or every `c = 1`) every layer keeps `crush_fraction`.
    """
    known = [s for s in spreads if s is not None]
    mean = sum(known) / len(known) if known else 0.0
    if mean <= 0.0:
        return [float(crush_fraction)] * len(spreads)
    return [float(crush_fraction) if s is None else min(max(crush_fraction * s / mean, 0.0), ceiling)
            for s in spreads]
