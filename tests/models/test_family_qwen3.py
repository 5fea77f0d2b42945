"""Qwen3 configurations of real checkpoints (tied 0.6B-4B, untied 8B+, head_dim 128 over hidden 2560,
theta 1e6, yarn): greedy tokens and logprobs against transformers in fp32 on tiny random models."""
import pytest

from corral import LLM
from tests.models.helpers import YARN_ROPE, assert_matches_transformers, long_prompts, short_prompts
from tests.tiny_models import build_model

CONFIGS = {
    "tied_small": dict(rope_theta=1e6, tie_word_embeddings=True, legacy_rope=True),
    "untied_large": dict(rope_theta=1e6, tie_word_embeddings=False, legacy_rope=True),
    "head_dim_wider_than_hidden": dict(hidden_size=48, num_attention_heads=4, head_dim=32, rope_theta=1e6,
                                       tie_word_embeddings=True),  # as 4B: 32 x 128 over 2560
    "yarn": dict(rope_theta=1e6, rope_scaling=YARN_ROPE, legacy_rope=True),
    "attention_bias": dict(attention_bias=True),
    "sliding_window_off": dict(use_sliding_window=False, sliding_window=8, max_window_layers=1),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_qwen3_config_matches_transformers(tmp_path, case):
    model_dir = build_model("qwen3", tmp_path / case, **CONFIGS[case])
    assert_matches_transformers(model_dir, short_prompts())


@pytest.mark.parametrize("rope", [None, YARN_ROPE], ids=["default", "yarn"])
def test_qwen3_positions_up_to_max_position_embeddings_match_transformers(tmp_path, rope):
    model_dir = build_model("qwen3", tmp_path / "long", max_position_embeddings=256, rope_theta=1e6, rope_scaling=rope)
    assert_matches_transformers(model_dir, long_prompts(256, 12), num_new=12)


def test_qwen3_sliding_window_layers_are_a_one_line_error_at_load(tmp_path):
    model_dir = build_model("qwen3", tmp_path / "swa", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(ValueError, match=r"^sliding-window attention \(1 of 2 layers, window 8\) is not supported$"):
        LLM(str(model_dir), dtype="float32", device="cpu")
