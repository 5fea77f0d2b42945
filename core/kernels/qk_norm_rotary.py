"""Qwen3's per-head q/k RMSNorm and NeoX rotary in one in-place kernel: a decode step runs one
launch per layer where the unfused path runs three (q norm, k norm, rotary), four with the KV-cache
store, which the kernel can also take over (`kv_cache`, `slot_mapping`)."""
import torch
import triton
import triton.language as tl

from corral.kernels.kv_cache import check_kv_store, to_cache_type
from corral.kernels.norm import rms_norm_ref
from corral.kernels.rotary import apply_rotary_ref, check_rotary_inputs


@triton.jit
def _load_heads(x_ptr, stride_h, num_heads, w_ptr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, HALF)[None, :]
    ptr = x_ptr + h * stride_h + d
    mask = h < num_heads
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + d).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + d).to(tl.float32)
    return ptr, mask, x1, x2, w1, w2


@triton.jit
def _norm_rotate_store(ptr, mask, x1, x2, w1, w2, eps, cos, sin, HALF: tl.constexpr):
    dtype = ptr.dtype.element_ty
    # RMSNorm as HF computes it: normalise in fp32, round to x.dtype, then scale by the weight
    r = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)[:, None]
    x1 = (w1 * (x1 * r).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    x2 = (w2 * (x2 * r).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    y1, y2 = (x1 * cos - x2 * sin).to(dtype), (x2 * cos + x1 * sin).to(dtype)
    tl.store(ptr, y1, mask=mask)
    tl.store(ptr + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def _qk_norm_rotary_kernel(q_ptr, k_ptr, pos_ptr, cache_ptr, qw_ptr, kw_ptr, eps,
                           stride_qt, stride_qh, stride_kt, stride_kh, stride_cache,
                           num_q_heads, num_kv_heads,
                           v_ptr, kv_ptr, slot_ptr, stride_vt, stride_vh, stride_kv, stride_slot, stride_kvh,
                           HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                           STORE_KV: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(cache_ptr + pos * stride_cache + d)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + d)
    # every load before the first store: q and k may alias as far as the compiler knows, so
    # this order keeps the whole token to one round trip to memory (decode is latency-bound)
    q, q_mask, q1, q2, qw1, qw2 = _load_heads(q_ptr + t * stride_qt, stride_qh, num_q_heads, qw_ptr,
                                              HALF, BLOCK_HQ)
    k, k_mask, k1, k2, kw1, kw2 = _load_heads(k_ptr + t * stride_kt, stride_kh, num_kv_heads, kw_ptr,
                                              HALF, BLOCK_HK)
    if STORE_KV:
        slot = tl.load(slot_ptr + t)
        h = tl.arange(0, BLOCK_HK)[:, None]
        v = tl.load(v_ptr + t * stride_vt + h * stride_vh + tl.arange(0, 2 * HALF)[None, :], mask=k_mask)
    _norm_rotate_store(q, q_mask, q1, q2, qw1, qw2, eps, cos, sin, HALF)
    k1, k2 = _norm_rotate_store(k, k_mask, k1, k2, kw1, kw2, eps, cos, sin, HALF)
    if STORE_KV:
        if slot >= 0:
            dst = kv_ptr + slot * stride_slot + h * stride_kvh
            tl.store(dst + d, to_cache_type(k1, kv_ptr), mask=k_mask)
            tl.store(dst + HALF + d, to_cache_type(k2, kv_ptr), mask=k_mask)
            tl.store(dst + stride_kv + tl.arange(0, 2 * HALF)[None, :], to_cache_type(v, kv_ptr), mask=k_mask)


def qk_norm_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                   cos_sin_cache: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                   eps: float, v: torch.Tensor | None = None, kv_cache: torch.Tensor | None = None,
                   slot_mapping: torch.Tensor | None = None) -> None:
    """RMSNorm each head of q [T, Hq, D] (weight q_weight [D]) and k [T, Hkv, D] (k_weight [D]),
    then rotate both, in place. Same inputs and layout as apply_rotary: strided views of a fused
    qkv output are fine, the head dim must be contiguous and a power of two. With v, kv_cache and
    slot_mapping, the final k and v are also written to the cache as store_kv_cache does."""
    num_tokens, num_q_heads, head_dim = check_rotary_inputs("qk_norm_rotary", q, k, cos_sin_cache)
    if q_weight.shape != (head_dim,) or k_weight.shape != (head_dim,):
        raise ValueError(f"q/k norm weights must be [{head_dim}], got {tuple(q_weight.shape)}, "
                         f"{tuple(k_weight.shape)}")
    store = kv_cache is not None
    if store:
        check_kv_store(k, v, kv_cache)
    if num_tokens == 0:
        return
    block_hq = triton.next_power_of_2(num_q_heads)
    v_args = (v, kv_cache, slot_mapping, v.stride(0), v.stride(1), kv_cache.stride(0), kv_cache.stride(2),
              kv_cache.stride(3)) if store else (k, k, positions, 0, 0, 0, 0, 0)
    _qk_norm_rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache, q_weight.contiguous(), k_weight.contiguous(), eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_q_heads, k.shape[1], *v_args, HALF=head_dim // 2, BLOCK_HQ=block_hq,
        BLOCK_HK=triton.next_power_of_2(k.shape[1]), STORE_KV=store,
        num_warps=min(16, max(4, block_hq * head_dim // 1024)),
    )


def qk_norm_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                       cos_sin_cache: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                       eps: float) -> None:
    q.copy_(rms_norm_ref(q, q_weight, eps))
    k.copy_(rms_norm_ref(k, k_weight, eps))
    apply_rotary_ref(q, k, positions, cos_sin_cache)
