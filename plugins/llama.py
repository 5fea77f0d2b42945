"""Llama family (Llama 2, Llama 3, SmolLM2, ...): LlamaForCausalLM from the shared layers."""
import torch
from torch import nn

from corral.layers.activation import SiluAndMul
from corral.layers.attention import Attention, ForwardContext
from corral.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from corral.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from corral.layers.norm import RMSNorm
from corral.layers.rotary import RotaryEmbedding
from corral.model_config import ModelConfig
from corral.registry.hookspecs import hookimpl


@hookimpl
def register_architectures(register):
    register("LlamaForCausalLM", "corral.plugins.llama:LlamaForCausalLM")


@hookimpl
def register_tool_parsers(register):  # Llama 3.1+ chat templates; Llama 2 and 3.0 have no tool format
    register("llama3_json", "corral.tool_parsers.llama3_json:Llama3JsonToolParser",
             architectures=["LlamaForCausalLM"], chat_template_contains=["<|python_tag|>", "ipython"])


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, qkv_bias: bool | None = None):
        super().__init__()
        qkv_bias = config.attention_bias if qkv_bias is None else qkv_bias
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, bias=qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads  # this rank's
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        bias=config.attention_bias)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                          config.rope_theta, config.rope_scaling)
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim ** -0.5)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        q, k, kv_stored = self.position_qk(positions, q, k, v, ctx)
        return self.o_proj(self.attn(q, k, v, ctx, kv_stored))

    def position_qk(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Everything between the qkv split and attention: q/k norm (if any), then rotary.
        Returns q, k and whether k and v are already in the KV cache (a fused kernel's work)."""
        q, k = self.normalize_qk(q, k)
        return *self.rotary_emb(positions, q, k), False  # in place; kernels take the strided views

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor):
        return q, k


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2,
                                                       bias=config.mlp_bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = self.attention_cls(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden_states, residual, ctx: ForwardContext):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, ctx)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, layer_cls=LlamaDecoderLayer):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layer_cls(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, ctx: ForwardContext):
        hidden_states, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual, ctx)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    layer_cls = LlamaDecoderLayer
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.layer_cls)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      tied_to=self.model.embed_tokens if config.tie_word_embeddings else None)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)
