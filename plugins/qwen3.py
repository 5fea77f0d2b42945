"""Qwen3 dense models: Llama's layout plus RMSNorm on each head's q and k before rotary."""
import torch

from corral.layers.norm import RMSNorm
from corral.model_config import ModelConfig
from corral.plugins.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM
from corral.registry.hookspecs import hookimpl


@hookimpl
def register_architectures(register):
    register("Qwen3ForCausalLM", "corral.plugins.qwen3:Qwen3ForCausalLM")


@hookimpl
def register_tool_parsers(register):
    register("hermes", "corral.tool_parsers.hermes:HermesToolParser", architectures=["Qwen3ForCausalLM"])


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor):
        return self.q_norm(q), self.k_norm(k)

    def position_qk(self, positions, q, k, v, ctx):
        if not q.is_cuda:
            return super().position_qk(positions, q, k, v, ctx)
        from corral.kernels.qk_norm_rotary import qk_norm_rotary
        # one launch instead of four, in place on the qkv views, storing k and v where the backend lets it
        store = (v, self.attn.kv_cache, ctx.attn_metadata.slot_mapping) if ctx.backend.name == "triton" else ()
        qk_norm_rotary(q, k, positions, self.rotary_emb.cos_sin_cache, self.q_norm.weight, self.k_norm.weight,
                       self.q_norm.eps, *store)
        return q, k, bool(store)


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3ForCausalLM(LlamaForCausalLM):
    layer_cls = Qwen3DecoderLayer
