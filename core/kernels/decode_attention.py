"""Paged decode attention (one query token per sequence), split over the context (flash-decoding).

Grid (num_kv_heads, num_seqs, max_splits): one program takes the GROUP query heads that share a
KV head (padded to 16 rows for tl.dot) over one contiguous slice of the context. A sequence's KV
heads are launched side by side, so the programs reading one cache row's heads run together (1-3%
faster at batches of 128 and more than sequences side by side, docs/results/2026-11-b5-kernels.md). A sequence is cut
into slices of at most split_len keys (whole tiles), or into max_splits longer ones where that
would need more, so short contexts use fewer programs and the rest return at once. An unsplit
sequence writes its output directly; otherwise each slice writes a partial output with its
log-sum-exp and counts itself in a per-(sequence, KV head) counter, and the last slice to arrive
merges them and resets the counter (kernels/arrival.py): no second kernel.
Slices are computed on the device from seq_lens, so the launch depends only on the batch shape:
it replays in a CUDA graph while seq_lens grow.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.arrival import last_to_arrive, reset
from corral.kernels.paged_attention import (LOG2E, _attend_tile, attention_output, check_attention_shapes,
                                            dot_precision)

MAX_SPLITS = 64


@triton.jit
def _merge_slices(part_out_ptr, part_lse_ptr, row0, h_ok, num_slices,
                  BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Softmax-weighted sum of num_slices partial outputs [BLOCK_H, HEAD_DIM] starting at row0."""
    d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for i in range(num_slices):
        lse = tl.load(part_lse_ptr + row0 + i, mask=h_ok, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(part_out_ptr + (row0 + i)[:, None] * HEAD_DIM + d[None, :], mask=h_ok[:, None],
                       other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe)
        acc = acc * alpha[:, None] + part * w[:, None]
        total = total * alpha + w
        m = m_new
    return acc / tl.where(total > 0, total, 1.0)[:, None]


@triton.jit(do_not_specialize=["stride_bt"])  # an eager step's block table is as wide as its longest sequence
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_out_ptr, part_lse_ptr, counters_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, qk_scale, max_splits, target_split_len,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_blk, stride_row, stride_kvh, stride_bt,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    tok = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) == tok:  # no query row (batch padding)
        return
    tok = tok.to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_slices = tl.minimum(max_splits, tl.maximum(tl.cdiv(seq_len, target_split_len), 1))
    split_len = tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_slices), BLOCK_N) * BLOCK_N, BLOCK_N)
    num_slices = tl.maximum(tl.cdiv(seq_len, split_len), 1)
    if split >= num_slices:
        return
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

    # an empty context (seq_len 0) leaves l_i == 0: it writes zeros
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_ptrs = out_ptr + tok * stride_ot + (head * stride_oh)[:, None] + d[None, :]
    if not SPLIT:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    elif num_slices == 1:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    else:
        row0 = (seq * tl.num_programs(0) * GROUP + head).to(tl.int64) * max_splits
        tl.store(part_out_ptr + (row0 + split)[:, None] * HEAD_DIM + d[None, :], out, mask=h_ok[:, None])
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row0 + split, lse, mask=h_ok)
        counter = counters_ptr + seq * tl.num_programs(0) + kv_head
        if last_to_arrive(counter, num_slices):
            out = _merge_slices(part_out_ptr, part_lse_ptr, row0, h_ok, num_slices, BLOCK_H, HEAD_DIM)
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
            reset(counter)


@functools.cache
def _block_n(head_dim: int, num_splits: int, index: int | None) -> int:
    """Keys per tile: 64, halved for head_dim 256. Unsplit (large batches, bandwidth-bound) tiles
    of 128 read about 2% faster where shared memory holds two 32 KiB K/V tiles per pipeline stage
    (A100, Hopper and later); split, shorter tiles keep more slices busy."""
    if head_dim > 128:
        return 32
    big_smem = torch.cuda.is_available() and torch.cuda.get_device_capability(index) in ((8, 0), (9, 0), (10, 0))
    return 128 if big_smem and num_splits == 1 else 64


class DecodeSplit(NamedTuple):
    num_splits: int  # the most slices a sequence is cut into
    split_len: int  # the longest slice, in keys, before num_splits caps the count


def default_split(num_seqs: int, num_kv_heads: int) -> DecodeSplit:
    """Measured on an H200 (docs/results/2026-11-b5-kernels.md). Up to 64 (sequence, KV head) pairs, as in
    single-stream decode, slices of 64 keys (one tile), at most 16 per sequence for 8 pairs or
    fewer, else 8: each slice is short, so a few hundred keys already fill the GPU; at batch 1 over
    200-1600 keys this took 6.4-11.5 us against 9.0-13.2 with the large-batch rule. Up to 511
    pairs, slices of up to 256 keys and a power of two, at most 32, of splits with at most 2048
    programs in all: the splits halve as the batch doubles. From 512 pairs, unsplit: with the
    longest sequences in the first rows (as the model runner lays a batch out) whole sequences
    balance the GPU better than slices and skip the merge, 4-8% more bandwidth at 512-1024 pairs.
    Depends on the batch shape only, so a CUDA graph captured for a batch size keeps it."""
    programs = num_seqs * num_kv_heads
    if programs <= 64:
        return DecodeSplit(16 if programs <= 8 else 8, 64)
    if programs >= 512:
        return DecodeSplit(1, 256)
    return DecodeSplit(min(32, 1 << max(2048 // programs, 1).bit_length() - 1), 256)


class DecodeWorkspace:
    """The split counters the decode kernel keeps between launches (zero when idle), grown as
    batches grow. One per engine: launches on one stream share it safely, since each kernel
    leaves every counter at zero. Outgrown buffers stay alive: CUDA graphs captured with them
    still write there."""

    def __init__(self):
        self.counters: torch.Tensor | None = None
        self.retired: list[torch.Tensor] = []

    def get(self, size: int, device: torch.device) -> torch.Tensor:
        if self.counters is None or self.counters.numel() < size or self.counters.device != device:
            if self.counters is not None:
                self.retired.append(self.counters)
            self.counters = torch.zeros(max(size, 1024), dtype=torch.int32, device=device)
        return self.counters


def paged_attention_decode(q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                           scale: float, out: torch.Tensor | None = None, num_splits: int | None = None,
                           workspace: DecodeWorkspace | None = None, *, split_len: int | None = None,
                           block_n: int | None = None, num_warps: int = 4,
                           num_stages: int = 2) -> torch.Tensor:
    """q [B', Hq, D], one query token per sequence, at row query_start_loc[i]; a sequence with no
    query row (query_start_loc[i + 1] == query_start_loc[i], CUDA-graph padding) is skipped, and
    one with seq_len 0 gets zeros. A sequence is cut into slices of at most split_len keys, but
    into no more than num_splits. Pass a workspace held across calls (and across CUDA-graph
    replays); without one, fresh counters are zeroed for this call. Reads no host-side lengths:
    safe to capture in a CUDA graph. block_n, num_warps and num_stages are for tuning benchmarks."""
    group, block_size = check_attention_shapes(q, kv_cache)
    num_seqs = metadata.num_seqs
    num_q_heads, head_dim = q.shape[1:]
    num_kv_heads = kv_cache.shape[3]
    out = attention_output(q, out)
    default = default_split(num_seqs, num_kv_heads)
    num_splits = default.num_splits if num_splits is None else num_splits
    split_len = default.split_len if split_len is None else split_len
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be between 1 and {MAX_SPLITS}, got {num_splits}")
    if split_len < 1:
        raise ValueError(f"split_len must be positive, got {split_len}")
    part_out, part_lse, counters = out, out, metadata.seq_lens  # placeholders of the right types when unsplit
    if num_splits > 1:
        part_out = torch.empty(num_seqs, num_q_heads, num_splits, head_dim, dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        counters = (workspace or DecodeWorkspace()).get(num_seqs * num_kv_heads, q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _decode_kernel[(num_kv_heads, num_seqs, num_splits)](
        q, k_cache, v_cache, out, part_out, part_lse, counters,
        metadata.block_tables, metadata.seq_lens, metadata.query_start_loc, scale * LOG2E,
        num_splits, split_len,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), metadata.block_tables.stride(0),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_N=block_n or _block_n(head_dim, num_splits, q.device.index), BLOCK_SIZE=block_size,
        SPLIT=num_splits > 1, PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out
