"""Model loading: packaged copy, random shapes, and a user's local safetensors folder."""

import pytest
import torch

import kvcrush
from kvcrush.models.loading import cache_dir, packaged_copy, resolve_dtype
from kvcrush.models.shapes import SHAPES, shape_config


def test_packaged_copy_is_safetensors_in_the_cache_folder(packaged_lm):
    folder = packaged_copy()
    assert folder.parent == cache_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin"))
    assert packaged_lm.tokenizer.convert_ids_to_tokens(packaged_lm.tokenizer.eos_token_id) == "<|im_end|>"


@pytest.mark.parametrize("name", list(SHAPES))
def test_shapes_build_configs_of_the_published_size(name):
    config = shape_config(name, num_hidden_layers=1)
    assert config.num_hidden_layers == 1
    assert config.num_attention_heads % config.num_key_value_heads == 0


def test_llama_3_8b_shape_is_the_real_one():
    config = shape_config("llama-3-8b")
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (32, 32, 8)
    assert config.hidden_size // config.num_attention_heads == 128


def test_random_model_with_overrides_runs(essay_prompt):
    lm = kvcrush.load_model("random:qwen2-7b", num_hidden_layers=1, hidden_size=128, intermediate_size=256,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=49152)
    assert lm.config.model_type == "qwen2" and lm.n_layers == 1
    result = kvcrush.generate(lm, essay_prompt, kvcrush.make_policy("kvcrush", budget=0.25), max_new_tokens=2)
    assert result.kv_bytes_after < result.kv_bytes_before


def test_local_safetensors_folder_loads(tmp_path, tiny_lm, essay_prompt):
    tiny_lm.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    loaded = kvcrush.load_model(str(tmp_path), device="cpu")
    assert loaded.name == str(tmp_path)
    reference = kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=4)
    assert kvcrush.generate(loaded, essay_prompt, "full", max_new_tokens=4).new_token_ids == reference.new_token_ids


def test_dtype_names():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(kvcrush.ModelError, match="Unknown dtype"):
        resolve_dtype("float12", cpu)
