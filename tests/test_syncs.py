"""Host syncs: the counter itself, then every policy's selection and decoding step on random models of two depths.

On a GPU each counted call drains the device's queue; a selection may make a few of them in all, never some per
layer, and a generated token at most two (reading the argmax, feeding it back).
"""

from __future__ import annotations

import pytest
import torch

import kvcrush
from kvcrush.syncs import HostSyncCounter

SELECT_LIMIT = 16
TOKEN_LIMIT = 2


# --- the counter ---------------------------------------------------------------------------------------------------
def _counted(action) -> HostSyncCounter:
    with HostSyncCounter() as syncs:
        action()
    return syncs


@pytest.mark.parametrize("name,action", [
    ("Tensor.item", lambda t, m: t[0].item()),
    ("Tensor.tolist", lambda t, m: t.tolist()),
    ("Tensor.cpu", lambda t, m: t.cpu()),
    ("Tensor.to('cpu')", lambda t, m: t.to("cpu")),
    ("Tensor.numpy", lambda t, m: t.numpy()),
    ("bool(tensor)", lambda t, m: bool(m[0])),
    ("int(tensor)", lambda t, m: int(t[0])),
    ("float(tensor)", lambda t, m: float(t[0])),
    ("Tensor.__index__", lambda t, m: [0, 1, 2, 3, 4][t[1]]),
    ("torch.nonzero", lambda t, m: m.nonzero()),
    ("torch.nonzero", lambda t, m: torch.nonzero(m)),
    ("Tensor.__getitem__[bool mask]", lambda t, m: t[m]),
    ("Tensor.__setitem__[bool mask]", lambda t, m: t.__setitem__(m, torch.zeros(2, dtype=t.dtype))),
    ("Tensor.__getitem__[tensor slice]", lambda t, m: t[: t[2]]),
    ("torch.unique", lambda t, m: torch.unique(t)),
    ("torch.bincount", lambda t, m: torch.bincount(t)),
    ("torch.where(condition)", lambda t, m: torch.where(m)),
    ("torch.repeat_interleave(tensor repeats)", lambda t, m: torch.repeat_interleave(t, t)),
    ("torch.tensor(data, device=...)", lambda t, m: torch.tensor([1, 2], device=t.device)),
    ("Tensor.to(device) of a host tensor", lambda t, m: torch.arange(3).to(t.device)),
    ("torch.arange(tensor size)", lambda t, m: torch.arange(t[2])),
])
def test_each_kind_of_sync_on_a_device_tensor_is_counted_once(name, action):
    tensor = torch.arange(5)  # made outside the block: stands for a tensor on the accelerator
    mask = tensor > 2
    syncs = _counted(lambda: action(tensor, mask))
    assert dict(syncs.by_call) == {name: 1}
    assert syncs.count == 1 and list(syncs.by_site)[0].startswith(f"{name} @ tests/test_syncs.py:")


def test_work_that_stays_on_one_side_is_not_counted():
    device_tensor = torch.arange(6)

    def work():
        on_device = (device_tensor * 2).sort().values.to(device_tensor.device)  # no move: same device
        on_device[on_device > 4] = 0  # a Python value under a mask: masked_fill, no sync
        torch.repeat_interleave(on_device, torch.ones_like(on_device), output_size=6)
        host = torch.arange(4)  # made on the host, so reading it waits for nothing
        host.tolist(), int(host[1]), host[host > 1], host.nonzero()
        moved = device_tensor.to("cpu")  # counted once, then a host tensor
        moved.tolist(), moved[moved > 2]
        torch.arange(3).to(device_tensor.device, non_blocking=True)

    syncs = _counted(work)
    assert dict(syncs.by_call) == {"Tensor.to('cpu')": 1}


def test_counts_add_up_across_blocks_until_reset():
    tensor = torch.arange(3)
    counter = HostSyncCounter()
    for _ in range(2):
        with counter:
            tensor.tolist()
    assert counter.count == 2
    counter.reset()
    assert counter.count == 0 and not counter.by_site


# --- selections and decoding -----------------------------------------------------------------------------------------
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun. " * 12
CONFIGS = {
    "full": ("full", {}), "random": ("random", {}), "streaming": ("streaming", {}), "h2o": ("h2o", {}),
    "snapkv": ("snapkv", {}), "pyramidkv": ("pyramidkv", {}), "tova": ("tova", {}), "knorm": ("knorm", {}),
    "keydiff": ("keydiff", {}), "kvcrush": ("kvcrush", {}),
    "kvcrush block": ("kvcrush", {"granularity": "block", "block_size": 4}),
    **{f"kvcrush anchor={mode}": ("kvcrush", {"anchor": mode}) for mode in ("random", "zeros", "ones", "mean")},
    "kvcrush anchors=2 fixed": ("kvcrush", {"anchors": 2}),
    "kvcrush anchors=2 kmeans": ("kvcrush", {"anchors": 2, "anchor_mode": "kmeans"}),
    "kvcrush block anchors=3 kmeans": ("kvcrush", {"granularity": "block", "block_size": 4, "anchors": 3,
                                                   "anchor_mode": "kmeans"}),
    "kvcrush best": ("kvcrush", {"representative": "best"}),
    "kvcrush adaptive": ("kvcrush", {"split": "adaptive"}),
    "kvcrush merge": ("kvcrush", {"merge": "values"}),
    "kvcrush head_reduction=all": ("kvcrush", {"head_reduction": "all"}),
    "kvcrush kv_bits=4 representative_bits=2": ("kvcrush", {"kv_bits": 4, "representative_bits": 2}),
    "kvcrush budget_bytes": ("kvcrush", {"budget_bytes": 4000}),
    "kvcrush(h2o) block best merge": ("kvcrush", {"base": "h2o", "granularity": "block", "block_size": 4,
                                                  "representative": "best", "merge": "values"}),
    "snapkv kv_bits=4": ("snapkv", {"kv_bits": 4}),
    "snapkv kv_bits=8": ("snapkv", {"kv_bits": 8}),
}


QUESTION = "Where does the cat sleep?"


@pytest.fixture(scope="module")
def prepared_by_depth() -> dict[int, kvcrush.PreparedPrompt]:
    """The same prompt prefilled on random Llama-shaped models of 4 and 32 layers."""
    prepared = {}
    for layers in (4, 32):
        lm = kvcrush.load_model("random:tiny", device="cpu", num_hidden_layers=layers)
        prepared[layers] = kvcrush.prepare(lm, TEXT, question=QUESTION)
    return prepared


def _policy(label: str) -> kvcrush.Policy:
    name, options = CONFIGS[label]
    return kvcrush.make_policy(name, budget=0.3, **options)


def _select_syncs(prepared: kvcrush.PreparedPrompt, label: str, cached_scores: bool) -> HostSyncCounter:
    policy = _policy(label)
    if cached_scores:
        prepared.select(policy)
    else:  # a fresh prefill: the counted selection scores too
        prepared = kvcrush.prepare(prepared.lm, TEXT, question=QUESTION)
    with HostSyncCounter() as syncs:
        prepared.select(policy)
    return syncs


@pytest.mark.parametrize("label", list(CONFIGS))
def test_a_selection_syncs_a_few_times_whatever_the_depth(prepared_by_depth, label):
    counts = {}
    for layers, prepared in prepared_by_depth.items():
        for cached in (True, False):
            syncs = _select_syncs(prepared, label, cached)
            assert syncs.count <= SELECT_LIMIT, (layers, cached, dict(syncs.by_site))
            counts[layers, cached] = syncs.count
    assert counts[4, True] == counts[32, True] and counts[4, False] == counts[32, False], counts


def _decode_syncs(prepared: kvcrush.PreparedPrompt, policy: kvcrush.Policy, max_new_tokens: int) -> tuple[int, int]:
    prepared.select(policy)  # its scores are cached from here on
    with HostSyncCounter() as syncs:
        result = prepared.generate(policy, max_new_tokens=max_new_tokens)
    return syncs.count, len(result.new_token_ids)


def _per_token(prepared, policy, short: int = 2, long: int = 8) -> float:
    (few, n_few), (many, n_many) = _decode_syncs(prepared, policy, short), _decode_syncs(prepared, policy, long)
    assert n_many > n_few
    return (many - few) / (n_many - n_few)


@pytest.mark.parametrize("label", ["full", "pyramidkv", "kvcrush merge", "snapkv kv_bits=8",
                                   "kvcrush kv_bits=4 representative_bits=2"])
def test_a_generated_token_syncs_at_most_twice(prepared_by_depth, label):
    for layers, prepared in prepared_by_depth.items():
        assert _per_token(prepared, _policy(label)) <= TOKEN_LIMIT, layers


@pytest.mark.parametrize("label", ["full", "snapkv", "kvcrush merge", "kvcrush kv_bits=4 representative_bits=2",
                                   "kvcrush(h2o) block best merge"])
def test_a_generate_gathers_its_compressed_cache_without_a_sync_per_layer(prepared_by_depth, label):
    """Selection, the compressed copy (kept rows, merges and storage bits sent once per device) and one token."""
    counts = {}
    for layers, prepared in prepared_by_depth.items():
        policy = _policy(label)
        prepared.select(policy)  # its scores are cached from here on
        with HostSyncCounter() as syncs:
            prepared.generate(policy, max_new_tokens=1)
        assert syncs.count <= SELECT_LIMIT + TOKEN_LIMIT, (layers, dict(syncs.by_site))
        counts[layers] = syncs.count
    assert counts[4] == counts[32], counts


@pytest.mark.parametrize("name,options", [("tova", {}), ("kvcrush", {"base": "tova", "merge": "values"}),
                                          ("kvcrush", {"base": "knorm", "kv_bits": 4, "representative_bits": 2,
                                                       "anchors": 2, "anchor_mode": "kmeans"})])
def test_decode_time_eviction_syncs_a_few_times_per_eviction_whatever_the_depth(prepared_by_depth, name, options):
    interval = 4
    policy = kvcrush.make_policy(name, budget=0.3, decode_interval=interval, **options)
    per_token = {layers: _per_token(prepared, policy) for layers, prepared in prepared_by_depth.items()}
    assert per_token[4] == per_token[32], per_token
    assert per_token[4] <= TOKEN_LIMIT + SELECT_LIMIT / interval, per_token
