import torch
from torch.nn import functional as F

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.kv_dtype import to_cache_dtype


class TorchAttentionBackend:
    """The reference: gathers each sequence's context from the paged cache and runs SDPA with an
    explicit causal mask. Runs on any device; the oracle the Triton backend is tested against."""

    name = "torch"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, scale: float, kv_stored: bool = False) -> torch.Tensor:
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        block_size = kv_cache.shape[2]
        flat_cache = kv_cache.view(2, -1, num_kv_heads, head_dim)
        if not kv_stored:
            valid = metadata.slot_mapping >= 0
            slots = metadata.slot_mapping[valid]
            flat_cache[0, slots] = to_cache_dtype(k[valid], kv_cache.dtype)
            flat_cache[1, slots] = to_cache_dtype(v[valid], kv_cache.dtype)

        device = q.device
        starts = metadata.query_start_loc[:-1].long()
        query_lens = metadata.query_start_loc[1:].long() - starts
        seq_lens = metadata.seq_lens.long()
        positions = torch.arange(metadata.max_seq_len, device=device)
        blocks = metadata.block_tables.long()[:, positions // block_size]
        context_slots = blocks * block_size + positions % block_size          # [B, L]
        keys, values = flat_cache[0, context_slots], flat_cache[1, context_slots]  # [B, L, Hkv, D]
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # an fp8 cache's; a no-op in the model's dtype

        offsets = torch.arange(metadata.max_query_len, device=device)
        query_mask = offsets[None] < query_lens[:, None]                      # [B, Lq]
        query_rows = (starts[:, None] + offsets[None]).clamp(max=q.shape[0] - 1)
        queries = q[query_rows]                                                # [B, Lq, Hq, D]
        query_pos = (seq_lens - query_lens)[:, None] + offsets[None]           # [B, Lq]
        mask = (positions[None, None] <= query_pos[..., None]) & (positions < seq_lens[:, None])[:, None]

        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=mask[:, None], scale=scale, enable_gqa=True)
        return out.transpose(1, 2)[query_mask]
