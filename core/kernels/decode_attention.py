"""Paged decode attention (one query token per sequence), split over the context (flash-decoding).

Grid (num_seqs, num_kv_heads, NUM_SPLITS): one program takes the GROUP query heads that share a
KV head (padded to 16 rows for tl.dot) over one contiguous slice of the context, and writes a
partial output with its log-sum-exp; a reduce kernel merges the slices. The slice length is
computed on the device from seq_lens, so the launch depends only on the batch shape and the
split count, never on max_seq_len: the pair replays in a CUDA graph while seq_lens grow.
"""
import functools

import torch
import triton
import triton.language as tl

from corral.backends.base import AttentionMetadata
from corral.kernels.paged_attention import LOG2E, _attend_tile, check_attention_shapes, dot_precision

MAX_SPLITS = 32


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_blk, stride_row, stride_kvh, stride_bt,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tok = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) == tok:  # no query row (batch padding)
        return
    tok = tok.to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    h = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + h
    h_ok = h < GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + tok * stride_qt + (head * stride_qh)[:, None] + d[None, :],
                mask=h_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = kv_head * stride_kvh
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    for s in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, s, end, m_i,
                                     qk_scale, stride_blk, stride_row, HEAD_DIM, BLOCK_N,
                                     BLOCK_SIZE, False, False, PRECISION)
    for s in range(full_end, end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, s, end, m_i,
                                     qk_scale, stride_blk, stride_row, HEAD_DIM, BLOCK_N,
                                     BLOCK_SIZE, True, False, PRECISION)

    # an empty slice (short sequence) leaves l_i == 0: it writes zeros and lse -inf
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + tok * stride_ot + (head * stride_oh)[:, None] + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    else:
        row = (seq * tl.num_programs(1) * GROUP + head).to(tl.int64) * NUM_SPLITS + split
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=h_ok[:, None])
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row, lse, mask=h_ok)


@triton.jit
def _reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, query_start_loc_ptr, stride_ot, stride_oh,
                   HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tok = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) == tok:
        return
    row = (seq * tl.num_programs(1) + head).to(tl.int64) * NUM_SPLITS
    sp = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(part_lse_ptr + row + sp)
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    w = tl.exp2(lse - lse_max)
    parts = tl.load(part_out_ptr + (row + sp)[:, None] * HEAD_DIM + d[None, :])
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + tok.to(tl.int64) * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


@functools.cache
def _num_sms(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _block_n(head_dim: int, num_splits: int, index: int | None) -> int:
    """Keys per tile: 64, halved for head_dim 256. Unsplit (large batches, bandwidth-bound) tiles
    of 128 read about 2% faster where shared memory holds two 32 KiB K/V tiles per pipeline stage
    (A100, Hopper and later); split, shorter tiles keep more slices busy."""
    if head_dim > 128:
        return 32
    big_smem = torch.cuda.is_available() and torch.cuda.get_device_capability(index) in ((8, 0), (9, 0), (10, 0))
    return 128 if big_smem and num_splits == 1 else 64


def default_num_splits(num_seqs: int, num_kv_heads: int, device: torch.device) -> int:
    """About four programs per SM for small batches, two for larger ones, one split once the
    batch alone fills the GPU. Depends on the batch shape only, so a CUDA graph captured for a
    batch size keeps it."""
    sms = _num_sms(device.index) if device.type == "cuda" else 4
    programs = num_seqs * num_kv_heads
    want = triton.cdiv((4 if programs < sms else 2) * sms, programs)
    return min(MAX_SPLITS, triton.next_power_of_2(want))


def paged_attention_decode(q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                           scale: float, out: torch.Tensor | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """q [B', Hq, D], one query token per sequence, at row query_start_loc[i]; a sequence with no
    query row (query_start_loc[i + 1] == query_start_loc[i], CUDA-graph padding) is skipped, and
    one with seq_len 0 gets zeros. Reads no host-side lengths: safe to capture in a CUDA graph."""
    group, block_size = check_attention_shapes(q, kv_cache)
    num_seqs = metadata.num_seqs
    num_q_heads, head_dim = q.shape[1:]
    num_kv_heads = kv_cache.shape[3]
    if out is None:
        out = torch.empty_like(q)
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, num_kv_heads, q.device)
    if num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    part_out = part_lse = out  # placeholders when there is nothing to merge
    if num_splits > 1:
        part_out = torch.empty(num_seqs, num_q_heads, num_splits, head_dim, dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32,
                               device=q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    block_h = max(16, triton.next_power_of_2(group))
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_out, part_lse,
        metadata.block_tables, metadata.seq_lens, metadata.query_start_loc, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), metadata.block_tables.stride(0),
        GROUP=group, BLOCK_H=block_h, HEAD_DIM=head_dim, BLOCK_N=_block_n(head_dim, num_splits, q.device.index),
        BLOCK_SIZE=block_size, NUM_SPLITS=num_splits, PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2,
    )
    if num_splits > 1:
        _reduce_kernel[(num_seqs, num_q_heads)](
            part_out, part_lse, out, metadata.query_start_loc, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, NUM_SPLITS=num_splits, num_warps=4,
        )
    return out
