"""The KV cache's element types: the model's own, or float8 e4m3 at scale 1.0, where values past its range
saturate to +-448 (as vLLM's fp8 KV cache without calibrated scales). No triton here: the torch backend and
CPU installs use it too."""
import torch

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as a KV cache of `dtype` holds it (torch's own float8 cast does not saturate)."""
    if dtype == torch.float8_e4m3fn:
        x = x.float().clamp(-FP8_MAX, FP8_MAX)
    return x.to(dtype)
