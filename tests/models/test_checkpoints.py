"""Checkpoint layouts and config spellings the loader must read."""
import json

import pytest
import torch

from corral import LLM, SamplingParams
from tests.models.helpers import reference_generate
from tests.tiny_models import build_model, load_reference

PROMPT = [5, 17, 42, 99, 3, 250]


def greedy(model_dir, **engine) -> list[int]:
    llm = LLM(str(model_dir), **engine)
    return llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0].token_ids


def test_sharded_checkpoint_with_index_loads(tmp_path):
    from transformers import AutoModelForCausalLM
    src = build_model("qwen3", tmp_path / "single")
    model = AutoModelForCausalLM.from_pretrained(src)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    (tmp_path / "sharded" / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (tmp_path / "sharded" / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert greedy(tmp_path / "sharded") == reference_generate(load_reference(src), PROMPT, 12)[0]


def test_tied_embeddings_load_without_an_lm_head_tensor(tmp_path):
    model_dir = build_model("llama", tmp_path / "tied", tie_word_embeddings=True)
    assert greedy(model_dir) == reference_generate(load_reference(model_dir), PROMPT, 12)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load_and_upcast(tmp_path, dtype):
    model_dir = build_model("qwen3", tmp_path / str(dtype), dtype=dtype)
    assert greedy(model_dir, dtype="float32") == reference_generate(load_reference(model_dir), PROMPT, 12)[0]


def test_legacy_rope_theta_spelling_gives_the_same_model(tmp_path):
    model_dir = build_model("llama", tmp_path / "m", rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    config = json.loads((model_dir / "config.json").read_text())
    expected = greedy(model_dir)
    config.pop("rope_parameters")
    config["rope_theta"] = 5000.0
    (model_dir / "config.json").write_text(json.dumps(config))
    assert greedy(model_dir) == expected
    config["rope_theta"] = 10.0
    (model_dir / "config.json").write_text(json.dumps(config))
    assert greedy(model_dir) != expected


def test_llama2_layout_with_as_many_kv_heads_as_heads(tmp_path):
    model_dir = build_model("llama", tmp_path / "l2", num_key_value_heads=4)
    assert greedy(model_dir) == reference_generate(load_reference(model_dir), PROMPT, 12)[0]


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model_dir = build_model("llama", tmp_path / "l3", rope_parameters=rope)
    assert greedy(model_dir) == reference_generate(load_reference(model_dir), PROMPT, 12)[0]
