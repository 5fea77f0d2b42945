from typing import Protocol

import torch

from corral.kernels.attention_metadata import AttentionMetadata


class AttentionBackend(Protocol):
    name: str

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, scale: float, kv_stored: bool = False) -> torch.Tensor:
        """Store k, v [T, Hkv, D] into kv_cache (unless kv_stored), then attend q [T, Hq, D]
        causally over each sequence's whole context in the cache. Returns [T, Hq, D]."""
        ...


def get_backend(name: str | None, device: torch.device) -> AttentionBackend:
    """`name` None picks by device: Triton on CUDA, torch elsewhere."""
    if name is None:
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        from corral.backends.torch_sdpa import TorchAttentionBackend
        return TorchAttentionBackend()
    if name == "triton":
        from corral.backends.triton_paged import TritonAttentionBackend
        return TritonAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r}; choose 'torch' or 'triton'")
