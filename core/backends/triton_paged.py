"""Triton attention over the paged KV cache: store the new K/V, then attend."""
import torch

from corral.backends.base import AttentionMetadata
from corral.kernels.decode_attention import DecodeWorkspace, paged_attention_decode
from corral.kernels.decode_attention_balanced import (DecodePlan, default_block_n, paged_attention_decode_balanced,
                                                      plan_decode)
from corral.kernels.kv_cache import store_kv_cache
from corral.kernels.paged_attention import paged_attention_prefill

DECODE_KERNELS = ("split", "balanced")


class TritonAttentionBackend:
    """decode_kernel "split" (decode_attention.py) or "balanced" (decode_attention_balanced.py,
    whose plan is made once per step, by the first layer that sees the step's metadata)."""

    name = "triton"

    def __init__(self, decode_kernel: str = "split"):
        if decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"unknown decode kernel {decode_kernel!r}; choose one of {', '.join(DECODE_KERNELS)}")
        self.decode_kernel = decode_kernel
        self.decode_workspace = DecodeWorkspace()
        self._plan: tuple[AttentionMetadata, bool, DecodePlan] | None = None  # for metadata, made in a capture?

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, scale: float, kv_stored: bool = False) -> torch.Tensor:
        if not kv_stored:
            store_kv_cache(k, v, kv_cache, metadata.slot_mapping)
        if not metadata.is_decode_only:
            return paged_attention_prefill(q, kv_cache, metadata, scale)
        if self.decode_kernel == "split":
            return paged_attention_decode(q, kv_cache, metadata, scale, workspace=self.decode_workspace)
        return paged_attention_decode_balanced(q, kv_cache, metadata, scale, plan=self._plan_for(metadata, q, kv_cache),
                                               workspace=self.decode_workspace)

    def _plan_for(self, metadata: AttentionMetadata, q: torch.Tensor, kv_cache: torch.Tensor) -> DecodePlan:
        # a CUDA graph is captured right after a warm-up run on the same metadata: the capture
        # must make its own plan, or its replays would read the warm-up's
        capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()
        if self._plan is None or self._plan[0] is not metadata or self._plan[1] != capturing:
            plan = plan_decode(metadata, default_block_n(q.shape[2]), kv_cache.shape[2])
            self._plan = (metadata, capturing, plan)
        return self._plan[2]
