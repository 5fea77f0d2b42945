"""Checkpoint contents of real Llama / Qwen3 releases beyond tests/models/test_checkpoints.py."""
import torch
from safetensors.torch import load_file, save_file

from tests.models.helpers import assert_matches_transformers, short_prompts
from tests.tiny_models import build_model


def rewrite_weights(model_dir, edit):
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_tied_checkpoint_that_also_stores_lm_head_loads(tmp_path):
    model_dir = build_model("qwen3", tmp_path / "tied", tie_word_embeddings=True, dtype=torch.bfloat16)
    rewrite_weights(model_dir, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    assert_matches_transformers(model_dir, short_prompts())


def test_rotary_inv_freq_buffers_of_older_checkpoints_are_ignored(tmp_path):
    model_dir = build_model("llama", tmp_path / "old", num_key_value_heads=4, dtype=torch.float16)
    rewrite_weights(model_dir, lambda t: t.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8)
                                                   for i in range(2)}))
    assert_matches_transformers(model_dir, short_prompts())
