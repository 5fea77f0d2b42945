"""Triton attention over the paged KV cache: store the new K/V, then attend."""
import torch

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.decode_attention import DecodeWorkspace, default_split, paged_attention_decode
from corral.kernels.kv_cache import store_kv_cache
from corral.kernels.paged_attention import paged_attention_prefill


class TritonAttentionBackend:
    name = "triton"

    def __init__(self):
        self.decode_workspace = DecodeWorkspace()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, scale: float, kv_stored: bool = False) -> torch.Tensor:
        if not kv_stored:
            store_kv_cache(k, v, kv_cache, metadata.slot_mapping)
        if metadata.is_decode_only:
            return paged_attention_decode(q, kv_cache, metadata, scale, workspace=self.decode_workspace)
        # a mixed batch's decodes go to the decode kernel where it splits their keys; unsplit (many decodes), it
        # would do what the varlen kernel's tiles do for them, in a second launch after the prompts' tiles
        if metadata.num_decodes and default_split(metadata.num_decodes, kv_cache.shape[3]).num_splits > 1:
            out = paged_attention_decode(q, kv_cache, metadata.decodes(), scale, workspace=self.decode_workspace)
            return paged_attention_prefill(q, kv_cache, metadata.prefills(), scale, out=out)
        return paged_attention_prefill(q, kv_cache, metadata, scale)
