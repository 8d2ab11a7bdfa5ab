"""Every tensor a selection or a decode step makes lands on its layer's device.

A CPU run cannot tell a tensor made on the layer's device from one made on the default device: both are CPU
tensors. So `prepared.select` and `prepared.generate` run with "meta" as the default device
(`with torch.device("meta")`, what `torch.set_default_device` does inside a block): a tensor made without
`device=` then lands on "meta", and combining it with the layer's CPU tensors, or copying it to the host, raises,
as a CPU tensor next to a layer's CUDA tensors does on a GPU (SnapKV's `torch.tensor(1.0)` on a prompt no longer
than its window did exactly that). `_Births` records where such tensors were made (kvcrush's own file and line),
so a failure names the line to fix, and a tensor made without a device that happens to be combined with nothing
is reported too.

The prompt is prefilled outside the block (the model's weights and cache are ordinary CPU tensors); the kept sets
and tokens inside it must equal a run outside it.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import kvcrush
from kvcrush.policies import POLICIES, SnapKV

PACKAGE = str(Path(kvcrush.__file__).resolve().parent)
# The factories `torch.device(...)` as a context fills in a device for (torch.utils._device's list, in part).
FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor, torch.arange, torch.zeros,
             torch.ones, torch.full, torch.empty, torch.empty_strided, torch.eye, torch.linspace, torch.rand,
             torch.randn, torch.randint, torch.randperm}
NEW_TOKENS = 6

CONFIGS = [(name, {}) for name in POLICIES] + [
    ("kvcrush", {"anchor": "random"}), ("kvcrush", {"anchor": "mean"}), ("kvcrush", {"signature_heads": "kv"}),
    ("kvcrush", {"granularity": "block", "block_size": 4}), ("kvcrush", {"representative": "best"}),
    ("kvcrush", {"split": "adaptive"}), ("kvcrush", {"anchors": 3}),
    ("kvcrush", {"anchors": 3, "anchor_mode": "kmeans"}),
    ("kvcrush", {"merge": "values"}), ("kvcrush", {"base": "h2o"}), ("kvcrush", {"base": "tova"}),
    ("kvcrush", {"decode_interval": 4}), ("snapkv", {"decode_interval": 4}), ("tova", {"decode_interval": 4}),
    ("knorm", {"decode_interval": 4}), ("streaming", {"decode_interval": 4}),
    ("snapkv", {"kv_bits": 4}), ("h2o", {"kv_bits": 2}), ("kvcrush", {"kv_bits": 8, "representative_bits": 2}),
]


class _Births(TorchFunctionMode):
    """Records `file:line` in kvcrush/ of every factory call without a `device=`.

    Entered inside `torch.device("meta")`, so it sees each call before that context fills in the device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            ours = [frame for frame in traceback.extract_stack()[:-1] if frame.filename.startswith(PACKAGE)]
            if ours:
                frame = ours[-1]
                self.sites[f"{Path(frame.filename).relative_to(Path(PACKAGE).parent)}:{frame.lineno}"] += 1
        return func(*args, **kwargs)


def _on_meta_default(action):
    """`action()` with "meta" as the default device; fails naming where tensors were made without a device."""
    births = _Births()
    try:
        with torch.device("meta"), births:
            result = action()
    except (RuntimeError, NotImplementedError) as error:
        pytest.fail(f"a tensor left its layer's device ({error}); made without device= at {dict(births.sites)}")
    assert not births.sites, f"tensors made without device= at {dict(births.sites)}"
    return result


SHORT = "Cats sleep for most of the day."  # with the template, no longer than SnapKV's window


def _short(lm) -> kvcrush.PreparedPrompt:
    """A pasted text no longer than SnapKV's observation window, query-agnostic."""
    prepared = kvcrush.prepare(lm, SHORT)
    assert prepared.n_budgeted <= SnapKV().window  # no prefix before the window: the case SnapKV got wrong
    return prepared


def _long(lm, text: str) -> kvcrush.PreparedPrompt:
    """About 150 context tokens and a question, query-aware: every policy evicts and KVCrush groups."""
    return kvcrush.prepare(lm, text[:700], question="What is the essay about?", query_aware=True)


def _check(prepare, name: str, options: dict) -> None:
    """Select and decode on a fresh prepared prompt (so the scorer runs inside the block, not from a cache),
    and compare with a run on another one outside the block."""
    policy = kvcrush.make_policy(name, budget=0.5, **options)
    prepared = prepare()
    trace = _on_meta_default(lambda: prepared.select(policy))
    result = _on_meta_default(lambda: prepared.generate(policy, max_new_tokens=NEW_TOKENS))
    expected = prepare().generate(policy, max_new_tokens=NEW_TOKENS)
    for got in (trace, result.trace):
        for layer, want in zip(got.layers, expected.trace.layers, strict=True):
            assert layer.kept.device.type == "cpu"
            assert torch.equal(layer.kept, want.kept)
    assert result.new_token_ids == expected.new_token_ids


@pytest.mark.parametrize("name,options", [(name, {}) for name in POLICIES], ids=list(POLICIES))
def test_a_prompt_shorter_than_the_window_stays_on_the_layers_device(tiny_lm, name, options):
    _check(lambda: _short(tiny_lm), name, options)


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                       for n, o in CONFIGS])
def test_every_policy_and_variant_stays_on_the_layers_device(tiny_lm, essay_prompt, name, options):
    _check(lambda: _long(tiny_lm, essay_prompt), name, options)


def test_the_check_catches_a_tensor_made_without_a_device(tiny_lm):
    """The SnapKV bug put back: a scorer that concatenates a default-device tensor with the layer's scores."""

    class Careless(SnapKV):
        def score(self, layer):
            scores = super().score(layer)
            return torch.cat([scores[:, :-1], torch.ones(scores.shape[0], 1)], dim=1)

    policy = Careless(budget=0.5)
    with pytest.raises(pytest.fail.Exception, match=r"test_devices\.py|made without device="):
        prepared = _short(tiny_lm)
        _on_meta_default(lambda: prepared.select(policy))


# --- where a model lives, and out-of-memory errors ---------------------------------------------------------------


def test_a_model_on_one_device_reports_it_for_every_layer(tiny_lm):
    from kvcrush.devices import layer_devices, model_devices

    assert model_devices(tiny_lm.model) == tiny_lm.devices == (torch.device("cpu"),)
    assert layer_devices(tiny_lm.model) == [torch.device("cpu")] * tiny_lm.n_layers


def test_a_device_map_loads_the_same_model(tmp_path, tiny_lm, essay_prompt):
    """`device_map="auto"` (every GPU; here, with none, the CPU) and an explicit map load the weights where they
    say and decode exactly what a plain load decodes."""
    tiny_lm.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    plain = kvcrush.load_model(str(tmp_path), device="cpu")
    mapped = kvcrush.load_model(str(tmp_path), device_map="auto")
    explicit = kvcrush.load_model(str(tmp_path), device_map={"": "cpu"})
    want = kvcrush.generate(plain, essay_prompt[:400], "snapkv", max_new_tokens=6).new_token_ids
    for lm in (mapped, explicit):
        assert lm.devices == (torch.device("cpu"),)
        assert kvcrush.generate(lm, essay_prompt[:400], "snapkv", max_new_tokens=6).new_token_ids == want


def test_a_random_shape_is_placed_by_its_device_map():
    from kvcrush.devices import layer_devices

    lm = kvcrush.load_model("random:tiny", device_map="auto")
    assert layer_devices(lm.model) == [torch.device("cpu")] * lm.n_layers
    with pytest.raises(kvcrush.ModelError, match="device_map"):
        kvcrush.load_model("random:tiny", device_map="everywhere")


def test_sync_waits_for_models_devices_and_lists(tiny_lm):
    from kvcrush.devices import synchronize

    synchronize(tiny_lm.model, [torch.device("cpu"), "cpu"], tiny_lm)  # CPU: nothing queued, nothing to wait for


HUGE = 1 << 48  # bytes: more than a 64-bit process can address, so the CPU allocator really refuses it


class _Hungry(SnapKV):
    """SnapKV whose scorer first asks for more memory than exists, after allocating a tensor it then abandons."""

    abandoned: list = []

    def score(self, layer):
        import weakref

        held = torch.ones(1024, 1024, device=layer.keys.device)
        _Hungry.abandoned.append(weakref.ref(held))
        torch.empty(HUGE, dtype=torch.uint8, device=layer.keys.device)
        return super().score(layer)


def test_running_out_of_memory_is_a_clear_error_and_the_prompt_stays_usable(tiny_lm, essay_prompt):
    """A real allocation failure inside a selection or a generation becomes a `ResourceError` saying how much was
    asked for; what the failed run allocated is freed before the error reaches the caller; the prepared prompt
    then serves the next run exactly as before."""
    prepared = _long(tiny_lm, essay_prompt)
    want = prepared.generate(kvcrush.make_policy("snapkv", budget=0.5), max_new_tokens=NEW_TOKENS)
    # Other windows than SnapKV's default, so the scores cached for `want` are not reused and the scorer runs.
    for run in (lambda: prepared.select(_Hungry(budget=0.5, window=8)),
                lambda: prepared.generate(_Hungry(budget=0.4, window=9), max_new_tokens=NEW_TOKENS)):
        _Hungry.abandoned.clear()
        with pytest.raises(kvcrush.ResourceError, match=r"Out of memory while \w+ing .*asked for 256\.00 TiB"):
            run()
        assert _Hungry.abandoned and all(ref() is None for ref in _Hungry.abandoned)
    again = prepared.generate(kvcrush.make_policy("snapkv", budget=0.5), max_new_tokens=NEW_TOKENS)
    assert again.new_token_ids == want.new_token_ids


def test_other_errors_are_not_reported_as_memory(tiny_lm):
    class Broken(SnapKV):
        def score(self, layer):
            raise RuntimeError("a bug, not a resource")

    with pytest.raises(RuntimeError, match="a bug"):
        _short(tiny_lm).select(Broken(budget=0.5))


def test_memory_and_gpu_errors_read_as_people_would_want():
    from kvcrush.devices import out_of_memory_message

    cuda = out_of_memory_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                                                        "has a total capacity of 139.80 GiB"), "prefilling", [])
    assert cuda.startswith("Out of GPU memory while prefilling (it asked for 2.00 GiB more)")
    failed = out_of_memory_message(RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors ..."),
                                   "decoding", [])
    assert "device-side assert triggered" in failed and "restart the app" in failed
    assert out_of_memory_message(RuntimeError("shape mismatch"), "decoding", []) is None
