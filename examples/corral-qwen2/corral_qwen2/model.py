"""Qwen2 / Qwen2.5: Llama's layout with biases on the q, k and v projections, no q/k norm."""
from corral.model_config import ModelConfig
from corral.plugins.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM


class Qwen2Attention(LlamaAttention):
    def __init__(self, config: ModelConfig):
        super().__init__(config, qkv_bias=True)


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


class Qwen2ForCausalLM(LlamaForCausalLM):
    layer_cls = Qwen2DecoderLayer
