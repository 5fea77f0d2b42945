from dataclasses import dataclass

import torch
from torch import nn

from corral.backends.base import AttentionBackend
from corral.kernels.attention_metadata import AttentionMetadata


@dataclass(slots=True)
class ForwardContext:
    """What one forward pass needs beyond its inputs; made by the runner, passed down the model."""

    attn_metadata: AttentionMetadata
    backend: AttentionBackend


class Attention(nn.Module):
    """Paged attention over this layer's slice of the KV cache (bound by the runner)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                kv_stored: bool = False) -> torch.Tensor:
        """kv_stored: k and v are already in the cache (a fused kernel wrote them)."""
        out = ctx.backend.forward(q, k, v, self.kv_cache, ctx.attn_metadata, self.scale, kv_stored)
        return out.reshape(out.shape[0], -1)
