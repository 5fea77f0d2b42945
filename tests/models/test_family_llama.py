"""Llama family configurations of real checkpoints (Llama 2 / 3 / 3.1 / 3.2, biases, RoPE scaling):
greedy tokens and logprobs against transformers in fp32 on tiny random models, on the CPU (the torch
path, the oracle that benchmarks.engine_check holds the Triton backend to) wherever they run."""
import pytest
import torch

from corral import LLM
from corral.layers.rotary import RotaryEmbedding
from tests.models.helpers import YARN_ROPE, assert_matches_transformers, long_prompts, short_prompts
from tests.tiny_models import build_model

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


CONFIGS = {
    "llama2_7b_mha": dict(num_key_value_heads=4, rms_norm_eps=1e-5, legacy_rope=True),
    "llama2_70b_gqa": dict(num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, legacy_rope=True),
    "llama31_gqa_llama3_rope": dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, legacy_rope=True),
    "llama32_tied": dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True, legacy_rope=True),
    "head_dim_not_hidden_over_heads": dict(head_dim=32),
    "sliding_window_not_shorter_than_positions": dict(max_position_embeddings=256, sliding_window=256),
    "attention_bias": dict(attention_bias=True),
    "mlp_bias": dict(mlp_bias=True),
    "rope_linear": dict(rope_scaling={"type": "linear", "factor": 2.0}, legacy_rope=True),
    "rope_dynamic": dict(rope_scaling={"type": "dynamic", "factor": 2.0}, legacy_rope=True),
    "rope_yarn": dict(rope_scaling=YARN_ROPE),
    "rope_yarn_legacy_spelling": dict(rope_scaling=YARN_ROPE, legacy_rope=True),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_llama_config_matches_transformers(tmp_path, case):
    model_dir = build_model("llama", tmp_path / case, **CONFIGS[case])
    assert_matches_transformers(model_dir, short_prompts())


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE, YARN_ROPE, {"rope_type": "dynamic", "factor": 2.0}],
                         ids=["default", "llama3", "yarn", "dynamic"])
def test_positions_up_to_max_position_embeddings_match_transformers(tmp_path, rope):
    model_dir = build_model("llama", tmp_path / "long", max_position_embeddings=256, rope_theta=500000.0,
                            rope_scaling=rope)
    assert_matches_transformers(model_dir, long_prompts(256, 12), num_new=12)


def hf_rope_config(rope: dict, max_positions: int):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=max_positions,
                       rope_scaling={"rope_theta": 500000.0, **rope})


ROPES_AT_REAL_SIZE = {  # head_dim 128, theta 5e5, as the real checkpoints
    "llama31": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
    "yarn_mscale": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2, "truncate": False},
}


@pytest.mark.parametrize("name", ROPES_AT_REAL_SIZE)
def test_rope_table_matches_transformers_at_real_head_dim(name):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    max_positions = 32768
    config = hf_rope_config(ROPES_AT_REAL_SIZE[name], max_positions)
    positions = torch.tensor([0, 1, 2047, 8191, 8192, 20000, max_positions - 1])
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions[None])
    ours = RotaryEmbedding(128, max_positions, 500000.0, ROPES_AT_REAL_SIZE[name])
    our_cos, our_sin = ours.cos_sin_cache[positions].chunk(2, dim=-1)
    torch.testing.assert_close(torch.cat([our_cos] * 2, -1), cos[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([our_sin] * 2, -1), sin[0], atol=1e-5, rtol=0)


def test_a_model_s_layers_share_one_rotary_table(tmp_path):
    llm = LLM(str(build_model("llama", tmp_path / "m", num_hidden_layers=3)))
    tables = {id(layer.self_attn.rotary_emb.cos_sin_cache) for layer in llm.engine.core.runner.model.model.layers}
    assert len(tables) == 1
    other = LLM(str(build_model("llama", tmp_path / "n", rope_theta=5000.0)))
    assert other.engine.core.runner.model.model.layers[0].self_attn.rotary_emb.cos_sin_cache.data_ptr() not in {
        layer.self_attn.rotary_emb.cos_sin_cache.data_ptr() for layer in llm.engine.core.runner.model.model.layers}


def test_unsupported_rope_scaling_is_a_one_line_error_at_load(tmp_path):
    rope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 256}
    model_dir = build_model("llama", tmp_path / "longrope", rope_scaling=rope)
    with pytest.raises(ValueError, match=r"^rope scaling 'longrope' is not supported; supported: default, linear, "
                                         r"dynamic, llama3, yarn$"):
        LLM(str(model_dir), dtype="float32", device="cpu")


def test_sliding_window_shorter_than_positions_is_a_one_line_error_at_load(tmp_path):
    model_dir = build_model("llama", tmp_path / "mistral_style", sliding_window=8)  # transformers windows each layer
    with pytest.raises(ValueError, match=r"^sliding-window attention \(2 of 2 layers, window 8\) is not supported$"):
        LLM(str(model_dir), dtype="float32", device="cpu")


def test_activation_other_than_silu_is_a_one_line_error_at_load(tmp_path):
    model_dir = build_model("llama", tmp_path / "gelu", hidden_act="gelu")
    with pytest.raises(ValueError, match=r"^hidden_act 'gelu' is not supported; supported: silu$"):
        LLM(str(model_dir), dtype="float32", device="cpu")
