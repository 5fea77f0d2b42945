import contextlib
import contextvars
import json
import math
from collections.abc import Iterator

import torch
from torch import nn

from corral.model_config import ROPE_TYPES, rope_type


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None,
                  max_position: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the factor cos and sin are scaled by, as transformers computes them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope_type(scaling)
    if kind in ("default", "dynamic"):  # dynamic NTK equals default up to max_position_embeddings, our limit
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn(head_dim, theta, scaling, max_position)
    raise ValueError(f"rope scaling {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")


def _yarn(head_dim: int, theta: float, scaling: dict, max_position: int | None) -> tuple[torch.Tensor, float]:
    old_len = scaling.get("original_max_position_embeddings") or max_position
    factor = scaling.get("factor") or max_position / old_len
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else get_mscale(factor))

    def correction_dim(rotations):
        return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation = 1 - ramp  # high-frequency dims keep their frequency, low ones are interpolated
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


_shared_tables: contextvars.ContextVar[dict | None] = contextvars.ContextVar("rope_tables", default=None)


@contextlib.contextmanager
def shared_rope_tables() -> Iterator[None]:
    """Rotary embeddings built inside share one cos/sin table per configuration: a model's layers hold
    one (Qwen3-4B's is 21 MB in float32 at 40,960 positions, 36 layers' 755 MB)."""
    token = _shared_tables.set({})
    try:
        yield
    finally:
        _shared_tables.reset(token)


def rope_table(head_dim: int, max_position: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """cos and sin of every position, side by side, in float32 on the default device."""
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, max_position)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    table = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    if attention_factor != 1.0:  # yarn: cos and sin scaled, so kernels reading the table need nothing more
        table *= attention_factor
    return table


class RotaryEmbedding(nn.Module):
    """NeoX-style rotary embedding (HF rotate_half), applied to q and k in place."""

    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict | None = None):
        super().__init__()
        shared = _shared_tables.get()
        key = (head_dim, max_position, theta, json.dumps(scaling, sort_keys=True, default=str),
               str(torch.get_default_device()))
        if shared is not None and key in shared:
            self.cos_sin_cache = shared[key]
        else:
            # a plain attribute, not a buffer: model.to(bf16) must leave the table in fp32
            self.cos_sin_cache = rope_table(head_dim, max_position, theta, scaling)
            if shared is not None:
                shared[key] = self.cos_sin_cache

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q [T, Hq, D], k [T, Hkv, D]; rotated in place and returned."""
        if q.is_cuda:
            from corral.kernels.rotary import apply_rotary
            apply_rotary(q, k, positions, self.cos_sin_cache)
            return q, k
        cos, sin = self.cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        for x in (q, k):
            x.copy_(_rotate(x, cos.to(x.dtype), sin.to(x.dtype)))
        return q, k


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos2, sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    return x * cos2 + torch.cat([-x2, x1], -1) * sin2
