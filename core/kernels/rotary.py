"""Rotary position embedding, NeoX style (rotate_half, as in HF Llama / Qwen3), applied in place."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(x_ptr, stride_h, num_heads, cos, sin,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < num_heads
    ptr = x_ptr + h * stride_h + d
    x1 = tl.load(ptr, mask=mask).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cache_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_cache, num_q_heads, num_kv_heads,
                   HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(cache_ptr + pos * stride_cache + d)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + d)
    _rotate_heads(q_ptr + t * stride_qt, stride_qh, num_q_heads, cos, sin, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr + t * stride_kt, stride_kh, num_kv_heads, cos, sin, HALF, BLOCK_HK)


def check_rotary_inputs(name: str, q: torch.Tensor, k: torch.Tensor,
                        cos_sin_cache: torch.Tensor) -> tuple[int, int, int]:
    num_tokens, num_q_heads, head_dim = q.shape
    if head_dim & (head_dim - 1) or head_dim < 2 or k.shape[2] != head_dim:
        raise ValueError(f"{name} needs one power-of-two head dim, got {head_dim}, {k.shape[2]}")
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError(f"{name} needs contiguous head dims and cache rows")
    if cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache has {cos_sin_cache.shape[1]} columns, head dim is {head_dim}")
    return num_tokens, num_q_heads, head_dim


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place (strided views of a fused qkv output are
    fine; the head dim must be contiguous). cos_sin_cache [max_positions, D] float32: cos in the
    first D/2 columns, sin in the last D/2. D must be a power of two."""
    num_tokens, num_q_heads, head_dim = check_rotary_inputs("apply_rotary", q, k, cos_sin_cache)
    if num_tokens == 0:
        return
    num_kv_heads = k.shape[1]
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_sin_cache.stride(0), num_q_heads, num_kv_heads, HALF=head_dim // 2,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        num_warps=4,
    )


def build_cos_sin_cache(head_dim: int, max_positions: int, base: float,
                        device: torch.device | None = None) -> torch.Tensor:
    """The plain (unscaled) RoPE table in the layout apply_rotary reads."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32, device=device), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> None:
    cos, sin = cos_sin_cache[positions.long()].chunk(2, dim=-1)
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]
    for x in (q, k):
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        x.copy_((x.float() * cos + rotated * sin).to(x.dtype))
