"""The packaged model's tokenizer round-trips text, with known ids and a known answer, on every supported transformers.

scripts/test.sh runs this file in both environments (transformers 5.2.0 in .venv, the newest release in
.venv-newest). The expected values were recorded under 5.2.0 and are the same under the newest release; before the
fix, transformers >= 5.17 read the converted copy's `CodeLlamaTokenizer` config with a SentencePiece pipeline
(`[0, 19556, 0, 6693]` for "Hello world", answers in byte-level symbols "ĊTheĠ...") and 5.2 removed the spaces
before punctuation when decoding.
"""

from __future__ import annotations

import json

import pytest
import transformers
from transformers import AutoTokenizer

import kvcrush
from kvcrush.models import loading
from kvcrush.models.loading import TokenizerRoundTripError, check_round_trip

PARAGRAPH = ("The owl counts 12 stars on line 5 ; the fox , 3 trees.\n"
             "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001F989!  "
             "Two  spaces,\ttab, don't stop:\n    indented code(x) -> [y] {z} <|im_end|> 1,234.56% $7")
PARAGRAPH_IDS = [
    504, 23142, 11002, 216, 33, 34, 5703, 335, 1761, 216, 37, 8544, 260, 16438, 3297, 216, 35, 3417, 30, 198, 51, 1939,
    2756, 1650, 11180, 1558, 28, 15486, 46494, 412, 2756, 5422, 2756, 1841, 17097, 241, 115, 40993, 179, 120, 248,
    15107, 116, 227, 17, 216, 5713, 216, 5600, 28, 197, 15999, 28, 1326, 982, 2853, 42, 472, 641, 6574, 2909, 24, 104,
    25, 4722, 933, 105, 77, 1662, 106, 109, 216, 2, 216, 33, 28, 34, 35, 36, 30, 37, 38, 21, 1885, 39,
]
CHAT = [{"role": "user", "content": "Where is the owl?"}]
CHAT_TEXT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
             "<|im_start|>user\nWhere is the owl?<|im_end|>\n<|im_start|>assistant\n")
NEEDLE_CONTEXT = ("Notes from the field.\nOn line 1 the fox counts 3 trees.\nOn line 2 the bear counts 7 rivers.\n"
                  "On line 3 the hawk counts 9 clouds.\nOn line 4 the deer counts 2 stones.\n"
                  "On line 5 the owl counts 12 stars.\nOn line 6 the frog counts 4 ponds.\n")
NEEDLE_QUESTION = "What does the owl count on line 5, and how many?"
# Greedy answers of the packaged model (fp32, CPU) under transformers 5.2.0 and the newest release alike.
NEEDLE_ANSWERS = {"full": "The owl counts on line 5 are 12.", "kvcrush": "The owl counts on line 5 are 12 stars."}


def _ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special).input_ids


@pytest.fixture(scope="module")
def tokenizer():
    return loading.packaged_tokenizer()


def test_a_paragraph_round_trips_with_known_ids(tokenizer):
    ids = _ids(tokenizer, PARAGRAPH)
    assert ids == PARAGRAPH_IDS, f"transformers {transformers.__version__}"
    assert tokenizer.decode(ids) == PARAGRAPH
    assert tokenizer.decode(ids, skip_special_tokens=True) == PARAGRAPH.replace("<|im_end|>", "")
    assert _ids(tokenizer, PARAGRAPH, special=True) == [1, *PARAGRAPH_IDS]  # the converted GGUF's BOS post-processor
    assert [tokenizer.decode([i]) for i in _ids(tokenizer, "Hello world")] == ["Hello", " world"]


def test_special_tokens_and_chat_template(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.eos_token_id, len(tokenizer)) == \
        ("<|im_start|>", "<|im_end|>", 2, 49152)
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == CHAT_TEXT
    assert _ids(tokenizer, CHAT_TEXT)[:3] == [1, 9690, 198] and _ids(tokenizer, CHAT_TEXT)[-3:] == [520, 9531, 198]


def test_the_packaged_model_answers_a_short_needle_prompt(packaged_lm):
    assert type(packaged_lm.tokenizer) is type(loading.packaged_tokenizer())
    for name, policy in (("full", "full"), ("kvcrush", kvcrush.make_policy("kvcrush", budget=0.5))):
        result = kvcrush.generate(packaged_lm, NEEDLE_CONTEXT, policy, max_new_tokens=24, question=NEEDLE_QUESTION)
        assert result.text == NEEDLE_ANSWERS[name], f"{name}, transformers {transformers.__version__}"


def test_the_converted_copy_holds_the_committed_tokenizer(packaged_lm):
    folder = loading.packaged_copy()
    for name in loading.TOKENIZER_FILE_NAMES:
        assert (folder / name).read_bytes() == (loading.TOKENIZER_FILES / name).read_bytes()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    from_folder = AutoTokenizer.from_pretrained(folder)
    assert _ids(from_folder, PARAGRAPH) == PARAGRAPH_IDS and from_folder.decode(PARAGRAPH_IDS) == PARAGRAPH


# What `packaged_copy()` wrote before the fix under transformers 5.2 (tokenizer_config.json, abridged), and the
# quantization config newer releases leave in config.json.
OLD_TOKENIZER_CONFIG = {
    "add_prefix_space": True, "backend": "tokenizers", "bos_token": "<|im_start|>",
    "clean_up_tokenization_spaces": True, "eos_token": "<|im_end|>", "legacy": False, "model_type": "gpt2",
    "tokenizer_class": "CodeLlamaTokenizer", "unk_token": "<|endoftext|>",
    "extra_special_tokens": ["▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>", "<FILL_ME>"],
}


def test_a_copy_written_before_is_brought_up_to_date(tmp_path, monkeypatch):
    monkeypatch.setenv("KVCRUSH_CACHE", str(tmp_path))
    folder = tmp_path / loading.PACKAGED_NAME
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights: not read by the update")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "gguf", "gguf_file": loading.PACKAGED_GGUF, "dequantize": False}}))
    (folder / "tokenizer.json").write_bytes((loading.TOKENIZER_FILES / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps(OLD_TOKENIZER_CONFIG))
    (folder / "special_tokens_map.json").write_text("{}")

    assert loading.packaged_copy() == folder
    for name in loading.TOKENIZER_FILE_NAMES:
        assert (folder / name).read_bytes() == (loading.TOKENIZER_FILES / name).read_bytes()
    assert not (folder / "special_tokens_map.json").exists()
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "llama"}
    assert (folder / "model.safetensors").read_bytes() == b"weights: not read by the update"  # not converted again
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert _ids(tokenizer, PARAGRAPH) == PARAGRAPH_IDS and tokenizer.decode(PARAGRAPH_IDS) == PARAGRAPH
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert loading.packaged_copy() == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # up to date: nothing rewritten


class _Garbling:
    """Stands in for a tokenizer read with the wrong pipeline: ids as usual, byte-level symbols when decoding."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, **kwargs):
        return self.inner(text, **kwargs)

    def decode(self, ids, **kwargs):
        return self.inner.convert_tokens_to_string(self.inner.convert_ids_to_tokens(ids)).replace(" ", "Ġ")


def test_the_load_time_check_fails_loudly(tokenizer, monkeypatch):
    check_round_trip(tokenizer, "the packaged model", known_ids=loading.KNOWN_IDS)
    with pytest.raises(TokenizerRoundTripError, match="does not give back the text it encoded"):
        check_round_trip(_Garbling(tokenizer), "the packaged model")
    with pytest.raises(TokenizerRoundTripError, match=r"encodes 'Hello world' as \[19556, 905\], not \[1, 2\]"):
        check_round_trip(tokenizer, "the packaged model", known_ids={"Hello world": [1, 2]})
    assert issubclass(TokenizerRoundTripError, kvcrush.ModelError)
    # load_model refuses the packaged model (and random shapes, which use its tokenizer) with a garbling tokenizer.
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: _Garbling(tokenizer))
    with pytest.raises(TokenizerRoundTripError, match="transformers " + transformers.__version__):
        kvcrush.load_model("random:tiny", device="cpu")
