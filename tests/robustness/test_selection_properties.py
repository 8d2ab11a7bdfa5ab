"""Property-based tests (hypothesis) of the selection code: any scores, any budget, any head count.

The policies' own `compress` runs on a real `LayerInputs`; only `score()` is replaced (FixedScores), so
the budget split, per-head top-k, KVCrush grouping and block handling are the engine's real code.
Every outcome is either a valid selection or a clear `KVCrushError`.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvcrush import crush
from kvcrush.budget import plan_budget, resolve_budget
from kvcrush.errors import BudgetError, KVCrushError
from kvcrush.policies.kvcrush import KVCrush
from tests.robustness.conftest import FixedScores, make_layer

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=200, deadline=None)


@st.composite
def heads(draw):
    kv_heads = draw(st.integers(1, 8))
    group = draw(st.integers(1, 8 // kv_heads))
    return kv_heads, kv_heads * group


@st.composite
def score_tensor(draw, rows: int, n: int):
    """Scores of several flavours: continuous, heavy ties, constant, with +-inf and NaN."""
    kind = draw(st.sampled_from(["normal", "ties", "constant", "extreme", "nan"]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(rows, n, generator=generator)
    if kind == "ties":
        return torch.randint(0, 3, (rows, n), generator=generator).float()
    if kind == "constant":
        return torch.full((rows, n), draw(st.floats(-1e6, 1e6)))
    scores = torch.randn(rows, n, generator=generator)
    mask = torch.rand(rows, n, generator=generator) < 0.3
    special = torch.tensor([math.inf, -math.inf, 1e30, -1e30]) if kind == "extreme" else torch.tensor([math.nan])
    picks = special[torch.randint(0, special.numel(), (rows, n), generator=generator)]
    return torch.where(mask, picks, scores)


budgets = st.one_of(
    st.integers(1, 60),
    st.floats(min_value=1e-6, max_value=1.0, allow_nan=False),
    st.sampled_from([1, 1.0, 0.5, 1e-6]),
)


@st.composite
def cases(draw, crushing: bool, blocks: bool = False):
    """Any case; `blocks=True` biases towards block-level runs that have representatives to pick."""
    kv_heads, query_heads = draw(heads())
    n = draw(st.integers(48, 160) if blocks else st.integers(1, 160))
    per_query = draw(st.booleans())
    scores = draw(score_tensor(query_heads if per_query else kv_heads, n))
    case = dict(
        n=n, kv_heads=kv_heads, query_heads=query_heads, scores=scores, budget=draw(budgets),
        sink=draw(st.integers(0, 12)), recent=draw(st.integers(0, 12)), seed=draw(st.integers(0, 1000)),
    )
    if blocks:
        case["budget"] = draw(st.floats(0.3, 0.8))
    if crushing:
        case.update(
            crush_fraction=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
            anchor=draw(st.sampled_from(crush.ANCHOR_MODES)),
            signature_heads=draw(st.sampled_from(["query", "kv"])),
            granularity="block" if blocks else draw(st.sampled_from(["token", "token", "block"])),
            block_size=draw(st.integers(1, 6) if blocks else st.integers(1, 24)),
        )
    return case


def _base(case) -> FixedScores:
    return FixedScores(budget=case["budget"], sink=case["sink"], recent=case["recent"], seed=case["seed"],
                       scores=case["scores"])


def _common_checks(trace, case) -> torch.Tensor:
    """Valid, duplicate-free, ascending, same count per head; sink and recent kept. Returns kept."""
    n, kv_heads = case["n"], case["kv_heads"]
    kept = trace.kept
    assert kept.dtype == torch.int32  # compact: positions in the narrowest indexable type (kvcrush.compact)
    assert kept.dim() == 2 and kept.shape[0] == kv_heads
    assert bool(((kept >= 0) & (kept < n)).all())
    for row in kept.tolist():
        assert row == sorted(set(row)), "kept indices must be ascending and unique"
    budget = resolve_budget(case["budget"], n)
    if budget >= n:
        assert trace.no_op and kept.shape[1] == n
        return kept
    assert not trace.no_op
    sink = min(case["sink"], budget)
    recent = min(case["recent"], budget - sink)
    assert trace.sink == sink
    always = list(range(sink)) + list(range(n - trace.recent, n))
    assert trace.recent >= recent
    for row in kept.tolist():
        assert set(always) <= set(row), "sink and recent tokens are always kept"
    return kept


@SETTINGS
@given(cases(crushing=False))
def test_importance_selection_properties(case):
    trace = _base(case).compress(make_layer(case["n"], case["kv_heads"], case["query_heads"]))
    kept = _common_checks(trace, case)
    budget = resolve_budget(case["budget"], case["n"])
    assert kept.shape[1] == min(budget, case["n"]), "exactly T per head (or N when T >= N)"


@SETTINGS
@given(st.one_of(cases(crushing=True), cases(crushing=True, blocks=True)))
def test_kvcrush_selection_properties(case):
    n = case["n"]
    options = {k: case[k] for k in ("crush_fraction", "anchor", "signature_heads", "granularity", "block_size")}
    policy = KVCrush(budget=case["budget"], base=_base(case), seed=case["seed"], **options)
    layer = make_layer(n, case["kv_heads"], case["query_heads"])
    budget = resolve_budget(case["budget"], n)
    try:
        trace = policy.compress(layer)
    except KVCrushError as error:
        # The one refusal the spec allows: blocks that cannot fit the budget, with a message that says so.
        event("refused: blocks do not fit")
        assert case["granularity"] == "block" and isinstance(error, BudgetError)
        assert f"too small for blocks of {case['block_size']}" in str(error)
        plan = plan_budget(n, budget, case["sink"], case["recent"], case["crush_fraction"])
        assert plan.middle_budget < (plan.middle_end - plan.middle_start) % case["block_size"]
        return
    kept = _common_checks(trace, case)
    if budget >= n:
        event("no-op: T >= N")
        return
    event(f"{case['granularity']} level, {'some' if trace.crush_used else 'no'} representatives")
    plan = plan_budget(n, budget, case["sink"], case["recent"], case["crush_fraction"])
    rows = [set(row) for row in kept.tolist()]
    if case["granularity"] == "token":
        assert kept.shape[1] == budget, "exactly T per head"
        candidates = set(trace.candidates.tolist())
        picks = trace.representatives.tolist()
        middle = set(range(plan.middle_start, plan.middle_end))
        assert candidates <= middle
        assert len(picks) == len(set(picks)) == min(len(candidates), plan.crush) == trace.crush_used
        assert set(picks) <= candidates, "representatives come from the evicted set"
        # the evicted set is exactly what no head's importance top-k kept
        kv_scores = policy.kv_scores(case["scores"].float(), layer)[:, plan.middle_start : plan.middle_end]
        top = crush.stable_top_indices(kv_scores, plan.importance) + plan.middle_start
        assert candidates == middle - set(top.flatten().tolist())
    else:
        size = case["block_size"]
        assert kept.shape[1] <= budget, "never more than T at block level"
        assert budget - kept.shape[1] < size, "short of T by less than one block"
        blocks = trace.blocks.tolist()
        n_blocks = len(blocks)
        for start, end in blocks:
            assert end - start == size and plan.middle_start <= start and end <= n - trace.recent
        candidates = set(trace.candidates.tolist())
        picks = trace.representatives.tolist()
        assert candidates <= set(range(n_blocks))
        assert len(picks) == len(set(picks)) and set(picks) <= candidates
        # whole blocks: each kept middle token's block is kept entirely
        for row in rows:
            for start, end in blocks:
                inside = set(range(start, end)) & row
                assert not inside or len(inside) == size
        picks = [t for b in picks for t in range(blocks[b][0], blocks[b][1])]
    for row in rows:
        assert set(picks) <= row, "representatives are in every head"


# --- the public building blocks ---------------------------------------------------------------------------


@FAST
@given(st.integers(1, 8), st.integers(0, 80), st.data())
def test_signatures_mark_the_top_half_of_each_head(n_heads, m, data):
    scores = data.draw(score_tensor(n_heads, m)) if m else torch.zeros(n_heads, 0)
    bits = crush.signatures(scores)
    assert bits.shape == (m, n_heads) and bits.dtype == torch.bool
    assert bits.sum(dim=0).tolist() == [m // 2] * n_heads
    for head in range(n_heads):
        finite = torch.isfinite(scores[head]).all()
        if finite and m:
            # every marked token outranks every unmarked one (ties: lower index first)
            ranked = sorted(range(m), key=lambda t: (-float(scores[head, t]), t))
            assert set(ranked[: m // 2]) == set(bits[:, head].nonzero().flatten().tolist())


@FAST
@given(st.integers(0, 40), st.integers(1, 24), st.sampled_from(crush.ANCHOR_MODES), st.integers(0, 99), st.data())
def test_anchor_modes(n, width, mode, seed, data):
    bits = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=width, max_size=width),
                                           min_size=n, max_size=n)), dtype=torch.bool).reshape(n, width)
    anchor = crush.anchor(bits, mode, seed)
    assert anchor.shape == (width,) and anchor.dtype == torch.bool
    if mode == "zeros":
        assert not anchor.any()
    elif mode == "ones":
        assert anchor.all()
    elif mode == "alternating":
        assert anchor.tolist() == [bool(i % 2) for i in range(width)]
    elif mode == "mean":
        expected = [n > 0 and sum(bits[:, h].tolist()) / n > 0.5 for h in range(width)]
        assert anchor.tolist() == expected
    else:
        assert torch.equal(anchor, crush.anchor(bits, mode, seed)), "random anchors are seeded"


@FAST
@given(st.integers(0, 40), st.integers(1, 24), st.data())
def test_hamming_distance(n, width, data):
    flat = data.draw(st.lists(st.booleans(), min_size=n * width, max_size=n * width))
    bits = torch.tensor(flat, dtype=torch.bool).reshape(n, width)
    anchor = torch.tensor(data.draw(st.lists(st.booleans(), min_size=width, max_size=width)), dtype=torch.bool)
    distances = crush.hamming(bits, anchor)
    assert distances.dtype == torch.int64 and distances.shape == (n,)
    for row, distance in zip(bits.tolist(), distances.tolist(), strict=True):
        assert distance == sum(a != b for a, b in zip(row, anchor.tolist(), strict=True))
    assert crush.hamming(anchor[None], anchor).tolist() == [0]


@FAST
@given(st.integers(1, 60), st.integers(0, 70), st.integers(0, 8), st.data())
def test_representatives_and_buckets(n, k, max_distance, data):
    distances = torch.tensor(data.draw(st.lists(st.integers(0, max_distance), min_size=n, max_size=n)))
    candidates = sorted(data.draw(st.sets(st.integers(0, n - 1))))
    picks = crush.representatives(distances, torch.tensor(candidates, dtype=torch.long), k).tolist()
    count = min(len(candidates), k)
    assert len(picks) == count == len(set(picks))
    assert set(picks) <= set(candidates)
    ordered = sorted(candidates, key=lambda t: (int(distances[t]), t))
    if count:
        step = len(candidates) // count
        assert picks == [ordered[i * step] for i in range(count)]
        picked = [int(distances[t]) for t in picks]
        assert picked == sorted(picked), "picks follow the distance order"
    groups = crush.buckets(distances, torch.tensor(candidates, dtype=torch.long), k)
    assert len(groups) == count
    if count:
        assert sorted(t for g in groups for t in g.tolist()) == candidates, "buckets partition the candidates"
        assert [g[0].item() for g in groups] == picks, "each representative heads its bucket"


@FAST
@given(st.integers(1, 200), budgets, st.integers(0, 20), st.integers(0, 20), st.floats(0, 1))
def test_budget_plan_adds_up(n, budget, sink, recent, fraction):
    tokens = resolve_budget(budget, n)
    assert tokens >= 1
    if isinstance(budget, float):
        assert tokens == max(1, math.ceil(budget * n - 1e-9))
    plan = plan_budget(n, tokens, sink, recent, fraction)
    if plan.no_op:
        assert tokens >= n
        return
    assert plan.sink + plan.recent + plan.importance + plan.crush == tokens
    assert min(plan.sink, plan.recent, plan.importance, plan.crush) >= 0


def test_nan_scores_still_give_a_valid_selection():
    """A concrete example of the 'any scores' property (all-NaN scores)."""
    scores = torch.full((4, 30), math.nan)
    base = FixedScores(budget=10, sink=2, recent=2, scores=scores)
    trace = KVCrush(budget=10, base=base).compress(make_layer(30, 2, 4))
    assert trace.kept.shape == (2, 10)
