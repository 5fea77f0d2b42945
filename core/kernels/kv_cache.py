"""Write new K/V rows into the paged cache, in the cache's element type (kernels/kv_dtype.py)."""
import torch
import triton
import triton.language as tl

from corral.kernels.kv_dtype import FP8_MAX, to_cache_dtype

_FP8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def to_cache_type(x, cache_ptr):
    """x as the cache at cache_ptr holds it: an fp8 cache's values saturated at its range first."""
    cache_type: tl.constexpr = cache_ptr.dtype.element_ty
    if cache_type == tl.float8e4nv:
        return tl.clamp(x.to(tl.float32), -_FP8_MAX, _FP8_MAX, propagate_nan=tl.PropagateNan.ALL).to(cache_type)
    return x.to(cache_type)


@triton.jit
def _store_kv_cache_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ckv, stride_cslot, stride_ch,
    num_kv_heads, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < num_kv_heads) & (d < head_dim)
    k = tl.load(k_ptr + t.to(tl.int64) * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t.to(tl.int64) * stride_vt + h * stride_vh + d, mask=mask)
    dst = cache_ptr + slot * stride_cslot + h * stride_ch + d
    tl.store(dst, to_cache_type(k, cache_ptr), mask=mask)
    tl.store(dst + stride_ckv, to_cache_type(v, cache_ptr), mask=mask)


def store_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """k, v [T, Hkv, D] (last dim contiguous) -> kv_cache [2, num_blocks, block_size, Hkv, D] at
    slot_mapping[t] = block * block_size + row; slot -1 is skipped."""
    num_tokens, num_kv_heads, head_dim = k.shape
    check_kv_store(k, v, kv_cache)
    if num_tokens == 0:
        return
    _store_kv_cache_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(2), kv_cache.stride(3),
        num_kv_heads, head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )


def check_kv_store(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor):
    if k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError("storing to the KV cache needs the head dim of k and v to be contiguous")
    cache_heads, cache_dim = kv_cache.shape[3:]
    if (cache_heads, cache_dim) != tuple(k.shape[1:]) or v.shape != k.shape:
        raise ValueError(f"kv_cache holds [{cache_heads}, {cache_dim}] per token, k is "
                         f"{list(k.shape[1:])}, v {list(v.shape[1:])}")
    if not kv_cache[0].is_contiguous():
        raise ValueError("kv_cache must be contiguous within its K and V halves")


def store_kv_cache_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    flat = kv_cache.view(2, -1, *kv_cache.shape[3:])
    flat[0, slots] = to_cache_dtype(k[keep], kv_cache.dtype)
    flat[1, slots] = to_cache_dtype(v[keep], kv_cache.dtype)
