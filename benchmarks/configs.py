"""The published configs of the benchmark models (from their Hugging Face repos)."""

QWEN3_COMMON = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, head_dim=128,
                    num_key_value_heads=8, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
                    torch_dtype="bfloat16", attention_bias=False, hidden_act="silu", eos_token_id=151645)

CONFIGS = {
    "qwen3-0.6b": dict(QWEN3_COMMON, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(QWEN3_COMMON, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-embedding-0.6b": dict(QWEN3_COMMON, vocab_size=151669, max_position_embeddings=32768, hidden_size=1024,
                                 intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                                 tie_word_embeddings=True, eos_token_id=151643),
    "llama-2-7b": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=4096,
                       intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=4096, torch_dtype="float16", tie_word_embeddings=False,
                       hidden_act="silu", eos_token_id=2),
}


def decode_weight_bytes(c: dict, itemsize: int = 2) -> int:
    """Weight bytes one decode step must read: every matrix once, the embedding table once (as the
    LM head; an untied input embedding is only gathered from, one row per token)."""
    untied_input_embedding = 0 if c["tie_word_embeddings"] else c["vocab_size"] * c["hidden_size"]
    return (num_params(c) - untied_input_embedding) * itemsize


def num_params(c: dict) -> int:
    from corral.model_config import ModelConfig
    return ModelConfig.from_hf(c).num_weight_params()
