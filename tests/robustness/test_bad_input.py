"""Bad input to the library and the CLI: each gets a `KVCrushError` subclass with a message that helps.

Every case asserts the exception type and a fragment of the message, and the library cases also
check that the shared model is still usable afterwards (the app keeps running after a bad input).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import kvcrush
from kvcrush import limits
from kvcrush.errors import BudgetError, ModelError, PolicyError, PromptError
from kvcrush.textio import MAX_TEXT_BYTES, decode_text, read_text_file
from tests.robustness.conftest import run_cli

PROMPT = "The quick brown fox jumps over the lazy dog. " * 12


def still_works(lm) -> None:
    result = kvcrush.generate(lm, PROMPT, kvcrush.make_policy("kvcrush", budget=0.5), max_new_tokens=2)
    assert result.new_token_ids and not lm.lock.locked()


# --- prompts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t \n"])
def test_empty_or_whitespace_prompt(tiny_lm, prompt):
    with pytest.raises(PromptError, match="The prompt is empty: paste or upload some text"):
        kvcrush.generate(tiny_lm, prompt, "snapkv", max_new_tokens=2)
    still_works(tiny_lm)


def test_prompt_not_text(tiny_lm):
    with pytest.raises(PromptError, match="prompt is empty"):
        kvcrush.generate(tiny_lm, None, "snapkv", max_new_tokens=2)  # type: ignore[arg-type]


def test_prompt_longer_than_the_context_window(short_context_lm):
    long_prompt = "word " * 700
    with pytest.raises(PromptError) as error:
        kvcrush.generate(short_context_lm, long_prompt, "snapkv", max_new_tokens=8)
    message = str(error.value)
    assert "handles at most 512 positions" in message
    assert "Shorten the text by about" in message
    still_works(short_context_lm)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_max_new_tokens_must_be_a_positive_whole_number(tiny_lm, bad):
    with pytest.raises(PromptError, match="max_new_tokens must be a whole number"):
        kvcrush.generate(tiny_lm, PROMPT, "snapkv", max_new_tokens=bad)


def test_prompt_that_would_not_fit_in_memory(tiny_lm, monkeypatch):
    """The estimate is real; only the reading of available memory is replaced (the seam)."""
    policy = kvcrush.make_policy("h2o", budget=0.5)
    room = limits.estimate_run_memory(tiny_lm, 60, 8, policy).total  # memory for about 60 tokens
    monkeypatch.setattr(limits, "available_memory", lambda device: room)
    with pytest.raises(PromptError) as error:
        kvcrush.generate(tiny_lm, "word " * 200, policy, max_new_tokens=8)
    message = str(error.value)
    assert message.startswith("Not enough memory for this run:")
    assert "prompt tokens + 8 new tokens need about" in message and "is available on cpu" in message
    assert "KV cache" in message and "prefill logits" in message
    assert "Shorten the prompt to about 60 tokens or fewer" in message
    assert not tiny_lm.lock.locked()
    monkeypatch.undo()
    still_works(tiny_lm)


def test_memory_refusal_when_nothing_fits(tiny_lm, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda device: 1024)
    with pytest.raises(PromptError, match="Even a one-token prompt does not fit"):
        kvcrush.generate(tiny_lm, PROMPT, "snapkv", max_new_tokens=2)


# --- budgets, block sizes, crush fractions, names ------------------------------------------------------------


@pytest.mark.parametrize(
    "budget,fragment",
    [
        (0, "A token budget must be at least 1, got 0."),
        ("0", "A budget must be positive"),
        (0.0, "A budget must be positive"),
        (-3, "A token budget must be at least 1, got -3."),
        (-0.25, "A budget must be positive"),
        ("-5", "A budget must be positive"),
        (1.5, "A fractional budget must be in (0, 1]"),
        ("150%", "A percentage budget must be in (0%, 100%], got 150%."),
        ("abc", "Budget 'abc' is not a number: use 0.25, 25% or a token count like 512."),
        ("", "Budget is empty"),
        ("nan", "Budget must be finite, got nan."),
        (math.nan, "Budget must be finite, got nan."),
        (math.inf, "Budget must be finite, got inf."),
        (True, "Budget must be a number, not a boolean."),
    ],
)
def test_bad_budget(budget, fragment):
    with pytest.raises(BudgetError) as error:
        kvcrush.make_policy("kvcrush", budget=budget)
    assert fragment in str(error.value)


def test_block_size_zero_or_negative():
    for size in (0, -4):
        with pytest.raises(BudgetError, match="block_size must be a whole number of tokens >= 1"):
            kvcrush.make_policy("kvcrush", budget=0.5, granularity="block", block_size=size)


def test_block_size_too_large_for_the_budget(tiny_lm):
    policy = kvcrush.make_policy("kvcrush", budget=16, granularity="block", block_size=64, base="h2o")
    with pytest.raises(BudgetError) as error:
        kvcrush.generate(tiny_lm, "word " * 100, policy, max_new_tokens=2)
    assert "is too small for blocks of 64" in str(error.value)
    assert "Raise the budget or lower the block size." in str(error.value)
    still_works(tiny_lm)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_crush_fraction_outside_unit_interval(fraction):
    with pytest.raises(BudgetError, match=r"crush_fraction must be in \[0, 1\]"):
        kvcrush.make_policy("kvcrush", budget=0.5, crush_fraction=fraction)


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("lru", {}, "Unknown policy 'lru'; choose one of full, random, streaming, h2o"),
        ("kvcrush", {"base": "lru"}, "Unknown base policy 'lru' for kvcrush; choose one of"),
        ("kvcrush", {"base": "full"}, "Unknown base policy 'full'"),
        ("kvcrush", {"anchor": "median"}, "Unknown anchor mode 'median'; choose one of random, zeros"),
        ("kvcrush", {"granularity": "page"}, "granularity must be 'token' or 'block'"),
        ("kvcrush", {"signature_heads": "all"}, "signature_heads must be 'query' or 'kv'"),
        ("snapkv", {"windw": 8}, "snapkv does not take windw; options:"),
    ],
)
def test_unknown_names(name, options, fragment):
    with pytest.raises(PolicyError) as error:
        kvcrush.make_policy(name, budget=0.5, **options)
    assert fragment in str(error.value)


# --- models ----------------------------------------------------------------------------------------------


def test_unknown_model_id_fails_fast():
    import time

    start = time.perf_counter()
    with pytest.raises(ModelError) as error:
        kvcrush.load_model("no-such-org/no-such-model")
    elapsed = time.perf_counter() - start
    message = str(error.value)
    assert "Model 'no-such-org/no-such-model'" in message
    assert "Hugging Face" in message
    assert elapsed < 10, f"an unknown id took {elapsed:.1f} s to fail"


def test_unknown_model_id_in_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"offline mode \(HF_HUB_OFFLINE\) is on"):
        kvcrush.load_model("no-such-org/no-such-model")


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("not a model!", "it is not a local folder and not a valid Hugging Face id"),
        ("a/b/c", "it is not a local folder and not a valid Hugging Face id"),
        ("../../../../../../etc", "has no config.json; it is not a Hugging Face model folder"),
        ("~/no-such-model-folder", "does not exist"),
    ],
)
def test_malformed_model_names(name, fragment):
    with pytest.raises(ModelError) as error:
        kvcrush.load_model(name)
    assert fragment in str(error.value)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelError, match="Model folder .* does not exist."):
        kvcrush.load_model(str(tmp_path / "missing"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="has no config.json; it is not a Hugging Face model folder"):
        kvcrush.load_model(str(tmp_path))


def test_unknown_random_shape():
    with pytest.raises(ModelError, match="Unknown random shape 'huge'; choose one of tiny"):
        kvcrush.load_model("random:huge")


class _Booby:
    """Unpickling this creates a directory: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=49152, max_position_embeddings=256)


def _booby_trapped_bin(folder: Path, marker: Path) -> None:
    torch.save({"model.embed_tokens.weight": _Booby(marker)}, folder / "pytorch_model.bin")


def test_the_marker_really_detects_unpickling(tmp_path):
    """Control: loading the trap with pickle enabled does create the marker, so the next tests mean something."""
    marker = tmp_path / "unpickled"
    _booby_trapped_bin(tmp_path, marker)
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)  # the unsafe call, on purpose, in a test
    assert marker.exists()


def test_folder_with_only_a_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "unpickled"
    folder.mkdir()
    _tiny_llama_config().save_pretrained(folder)
    _booby_trapped_bin(folder, marker)
    with pytest.raises(ModelError) as error:
        kvcrush.load_model(str(folder))
    assert "has no .safetensors weights. Pickle checkpoints (.bin, .pt) are never loaded" in str(error.value)
    assert not marker.exists()


def test_pickle_next_to_safetensors_is_ignored(tmp_path, tiny_lm):
    """A folder with both: the safetensors weights load, the pickle is never opened."""
    from transformers import AutoModelForCausalLM

    folder, marker = tmp_path / "model", tmp_path / "unpickled"
    AutoModelForCausalLM.from_config(_tiny_llama_config()).save_pretrained(folder, safe_serialization=True)
    tiny_lm.tokenizer.save_pretrained(folder)
    _booby_trapped_bin(folder, marker)
    lm = kvcrush.load_model(str(folder))
    assert lm.n_layers == 1
    assert not marker.exists()


def _write_config(folder: Path, config: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"unused": torch.zeros(1)}, str(folder / "model.safetensors"))


def test_remote_code_config_of_a_known_type_is_refused(tmp_path):
    config = _tiny_llama_config().to_dict()
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    _write_config(tmp_path / "model", config)
    with pytest.raises(ModelError, match=r"asks to run its own code \(auto_map\); remote code is never run here"):
        kvcrush.load_model(str(tmp_path / "model"))


def test_remote_code_config_of_an_unknown_type_is_refused_without_running_it(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "remote-code-ran"
    _write_config(folder, {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}})
    (folder / "configuration_evil.py").write_text(f"import os\nos.makedirs({str(marker)!r})\n")
    with pytest.raises(ModelError) as error:
        kvcrush.load_model(str(folder))
    assert "asks to run its own code" in str(error.value)
    assert "remote code is never run here" in str(error.value)
    assert not marker.exists()


def test_unknown_architecture_without_remote_code(tmp_path):
    _write_config(tmp_path / "model", {"model_type": "evil"})
    with pytest.raises(ModelError, match="is not a model this library can load .supported architectures: llama"):
        kvcrush.load_model(str(tmp_path / "model"))


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    with pytest.raises(ModelError) as error:
        kvcrush.load_model(str(folder))
    message = str(error.value)
    assert "is a 'gpt2' model: an architecture whose attention this library does not reproduce" in message
    assert all(family in message for family in ("llama", "qwen2", "mistral", "qwen3", "gemma2", "gemma3_text",
                                                "phi3", "mixtral", "qwen3_moe"))


@pytest.mark.parametrize("device,fragment", [("tpu", "Unknown device 'tpu'"), ("cuda:0", "no GPU is visible")])
def test_bad_device(device, fragment):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ModelError, match=fragment):
        kvcrush.load_model("random:tiny", device=device)


def test_bad_dtype():
    with pytest.raises(ModelError, match="Unknown dtype 'float64'"):
        kvcrush.load_model("random:tiny", dtype="float64")


# --- uploads -----------------------------------------------------------------------------------------------


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


@pytest.mark.parametrize(
    "data,fragment",
    [
        ("Café déjà vu, naïve".encode("latin-1"), "is not UTF-8 text (bad byte at offset 3); save it as UTF-8."),
        (PNG_HEADER, "looks binary (it contains NUL bytes); give a UTF-8 .txt file."),
        (b"\x89PNG\r\n\x1a\n", "is not UTF-8 text (bad byte at offset 0)"),
        (b"text\x00with NUL", "looks binary (it contains NUL bytes)"),
        (b"", "is empty."),
        (b"   \n\t  ", "is empty."),
        (b"\xef\xbb\xbf", "is empty."),
    ],
)
def test_bad_uploads(data, fragment):
    with pytest.raises(PromptError) as error:
        decode_text(data, name="notes.txt")
    assert str(error.value).startswith("notes.txt ")
    assert fragment in str(error.value)


def test_upload_size_limit_is_2_mib_and_exact():
    assert MAX_TEXT_BYTES == 2 * 1024 * 1024 == limits.MAX_TEXT_BYTES
    assert decode_text(b"a" * MAX_TEXT_BYTES) == "a" * MAX_TEXT_BYTES
    with pytest.raises(PromptError) as error:
        decode_text(b"a" * (MAX_TEXT_BYTES + 1), name="big.txt")
    assert str(error.value) == "big.txt is 2,097,153 bytes; the limit is 2,097,152 bytes of text."


def test_utf8_with_bom_is_accepted():
    assert decode_text("\ufeffhello".encode()) == "hello"


def test_prompt_file_that_does_not_exist(tmp_path):
    with pytest.raises(PromptError, match="does not exist or is not a file"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(PromptError, match="does not exist or is not a file"):
        read_text_file(tmp_path)


def test_oversize_prompt_file_is_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(MAX_TEXT_BYTES + 10)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(PromptError, match="the limit is 2,097,152 bytes of text"):
        read_text_file(big)


# --- the CLI ------------------------------------------------------------------------------------------------
# The argument handling runs in-process (same `main`, fast); a few cases also run as real subprocesses
# (argument lists, never a shell) to check the exit status and that no traceback reaches the user.


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--prompt", "   ", "--model", "random:tiny"], "error: The prompt is empty"),
        (["--prompt", "hi", "--budget", "abc"], "error: Budget 'abc' is not a number"),
        (["--prompt", "hi", "--budget", "0"], "error: A budget must be positive"),
        (["--prompt", "hi", "--budget", "-5"], "error: A budget must be positive"),
        (["--prompt", "hi", "--budget", "150%"], "error: A percentage budget must be in (0%, 100%]"),
        (["--prompt", "hi", "--budget", "nan"], "error: Budget must be finite, got nan."),
        (["--prompt", "hi", "--crush-fraction", "1.5"], "error: crush_fraction must be in [0, 1], got 1.5."),
        (["--prompt", "hi", "--crush-fraction", "-0.1"], "error: crush_fraction must be in [0, 1], got -0.1."),
        (["--prompt", "hi", "--granularity", "block", "--block-size", "0"], "error: block_size must be"),
        (["--prompt", "hi", "--policy", "lru"], "argument --policy: invalid choice: 'lru'"),
        (["--prompt", "hi", "--base", "full"], "argument --base: invalid choice: 'full'"),
        (["--prompt", "hi", "--anchor", "median"], "argument --anchor: invalid choice: 'median'"),
        (["--prompt", "hi", "--block-size", "x"], "argument --block-size: invalid int value: 'x'"),
        (["--prompt", "hi", "--model", "/no/such/folder"], "error: Model folder '/no/such/folder' does not exist."),
        (["--prompt", "hi", "--model", "random:tiny", "--max-new-tokens", "-1"], "max_new_tokens must be a whole"),
    ],
)
def test_cli_bad_input(args, fragment, capsys):
    from kvcrush.cli import main

    try:
        code = main(["generate", *args])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_cli_prompt_file_not_utf8_and_too_long(tmp_path, capsys):
    from kvcrush.cli import main

    latin = tmp_path / "latin.txt"
    latin.write_bytes("Café".encode("latin-1"))
    assert main(["generate", "--prompt-file", str(latin), "--model", "random:tiny"]) == 2
    assert "is not UTF-8 text (bad byte at offset 3)" in capsys.readouterr().err
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (MAX_TEXT_BYTES + 1))
    assert main(["generate", "--prompt-file", str(big), "--model", "random:tiny"]) == 2
    assert "is 2,097,153 bytes; the limit is 2,097,152 bytes of text." in capsys.readouterr().err


def test_cli_prompt_longer_than_context(tmp_path, capsys):
    """The packaged tokenizer with a random model of 8192 positions: 9000 words do not fit."""
    from kvcrush.cli import main

    text = tmp_path / "long.txt"
    text.write_text("word " * 9000)
    assert main(["generate", "--prompt-file", str(text), "--model", "random:tiny", "--max-new-tokens", "4"]) == 2
    assert "handles at most 8192 positions" in capsys.readouterr().err


def test_cli_in_real_subprocesses(tmp_path):
    """Exit status 2, the message on stderr, no traceback; both processes at once to save time."""
    from concurrent.futures import ThreadPoolExecutor

    folder, marker = tmp_path / "model", tmp_path / "unpickled"
    folder.mkdir()
    _tiny_llama_config().save_pretrained(folder)
    _booby_trapped_bin(folder, marker)
    cases = [
        (["--prompt", "   ", "--model", "random:tiny"], "error: The prompt is empty"),
        (["--prompt", "hello", "--model", str(folder)], "has no .safetensors weights"),
    ]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        done = list(pool.map(lambda case: run_cli("generate", *case[0]), cases))
    for (_args, fragment), process in zip(cases, done, strict=True):
        assert process.returncode == 2, process.stderr
        assert fragment in process.stderr
        assert "Traceback" not in process.stderr
    assert not marker.exists()
