"""Paged decode attention with the work balanced over the whole batch (stream-K over KV tiles).

The split kernel (decode_attention.py) gives each (sequence, KV head) its own programs, so at
middle batches its programs are short and uneven. Here the batch's KV tiles (BLOCK_N keys of
one sequence each) are laid end to end, sequence after sequence, and for each KV head
`num_programs` programs take equal runs of them: every program streams about the same bytes,
and one loop runs across sequence boundaries, so the loads of the next sequence's first tile are
in flight while the last one's are used. A program writes each sequence it holds whole straight
to the output; a sequence cut between programs leaves one partial per program, merged by the last
of them to arrive (kernels/arrival.py). Only a program's first and last sequences can be cut.

The plan (which sequence, and which of its tiles, each position of the run is) is computed on the
device from seq_lens, once per step for all layers (`DecodePlan`): a CUDA graph replays it as the
lengths grow.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from corral.backends.base import AttentionMetadata
from corral.kernels.arrival import last_to_arrive, reset
from corral.kernels.decode_attention import DecodeWorkspace, _merge_slices
from corral.kernels.paged_attention import LOG2E, _attend_tile, check_attention_shapes, dot_precision


class DecodePlan(NamedTuple):
    """The batch's KV tiles end to end. A padding row (no query) has no tiles."""
    block_n: int  # keys per tile
    tile_bounds: torch.Tensor  # [B + 1] int32: sequence i owns tiles tile_bounds[i]:tile_bounds[i + 1]
    tile_seq: torch.Tensor  # [max_tiles] int32: the sequence of each tile (past the last: clamped)
    tile_pos: torch.Tensor  # [max_tiles] int32: its index within that sequence


def default_block_n(head_dim: int) -> int:
    """Keys per tile: 64, halved for head_dim 256 (shared memory)."""
    return 32 if head_dim > 128 else 64


def plan_decode(metadata: AttentionMetadata, block_n: int, block_size: int) -> DecodePlan:
    """Device-side only (no host sync): safe inside a CUDA graph capture."""
    seq_lens, starts = metadata.seq_lens, metadata.query_start_loc
    num_seqs = seq_lens.shape[0]
    has_query = starts[1:num_seqs + 1] > starts[:num_seqs]
    tiles = torch.where(has_query, (seq_lens + block_n - 1) // block_n, 0)
    bounds = torch.zeros(num_seqs + 1, dtype=torch.int32, device=seq_lens.device)
    bounds[1:] = torch.cumsum(tiles, 0)
    max_tiles = num_seqs * triton.cdiv(metadata.block_tables.shape[1] * block_size, block_n)
    positions = torch.arange(max_tiles, dtype=torch.int32, device=seq_lens.device)
    tile_seq = torch.searchsorted(bounds[1:], positions, right=True).clamp_(max=num_seqs - 1).to(torch.int32)
    return DecodePlan(block_n, bounds, tile_seq, positions - bounds[tile_seq])


@triton.jit
def _store_output(out, seq, out_ptr, query_start_loc_ptr, head, h_ok, d, stride_ot, stride_oh):
    """`seq`'s attention output [BLOCK_H, HEAD_DIM] into its query row."""
    tok = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    tl.store(out_ptr + tok * stride_ot + (head * stride_oh)[:, None] + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])


@triton.jit
def _finish_seq(seq, prog, per, acc, l_i, m_i, out_ptr, part_out_ptr, part_lse_ptr, query_start_loc_ptr,
                tile_bounds_ptr, kv_head, parts_per_head, stride_ot, stride_oh,
                GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Writes `seq`'s result: to the output if this program held all its tiles, else as this
    program's partial (output and log-sum-exp) in the slot prog + seq."""
    h = tl.arange(0, BLOCK_H)
    h_ok = h < GROUP
    d = tl.arange(0, HEAD_DIM)
    head = kv_head * GROUP + h
    first = tl.load(tile_bounds_ptr + seq)
    last = tl.load(tile_bounds_ptr + seq + 1) - 1
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if first // per == last // per:
        _store_output(out, seq, out_ptr, query_start_loc_ptr, head, h_ok, d, stride_ot, stride_oh)
    else:
        row = head.to(tl.int64) * parts_per_head + prog + seq
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=h_ok[:, None])
        tl.store(part_lse_ptr + row, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), mask=h_ok)


@triton.jit
def _merge_if_last(seq, per, out_ptr, part_out_ptr, part_lse_ptr, counters_ptr, query_start_loc_ptr,
                   tile_bounds_ptr, kv_head, num_kv_heads, parts_per_head, stride_ot, stride_oh,
                   GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr):
    """For a sequence cut between programs: counts this program's partial in, and the last to
    arrive merges them all (slots first_prog + seq .. last_prog + seq) into the output."""
    first_prog = tl.load(tile_bounds_ptr + seq) // per
    num_parts = (tl.load(tile_bounds_ptr + seq + 1) - 1) // per - first_prog + 1
    if num_parts > 1:
        counter = counters_ptr + seq * num_kv_heads + kv_head
        if last_to_arrive(counter, num_parts):
            h = tl.arange(0, BLOCK_H)
            h_ok = h < GROUP
            d = tl.arange(0, HEAD_DIM)
            head = kv_head * GROUP + h
            row0 = head.to(tl.int64) * parts_per_head + first_prog + seq
            out = _merge_slices(part_out_ptr, part_lse_ptr, row0, h_ok, num_parts, BLOCK_H, HEAD_DIM)
            _store_output(out, seq, out_ptr, query_start_loc_ptr, head, h_ok, d, stride_ot, stride_oh)
            reset(counter)


@triton.jit
def _balanced_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_out_ptr, part_lse_ptr, counters_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, tile_bounds_ptr, tile_seq_ptr, tile_pos_ptr,
    num_seqs, parts_per_head, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_blk, stride_row, stride_kvh, stride_bt,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr,
):
    prog = tl.program_id(0)
    kv_head = tl.program_id(1)
    total = tl.load(tile_bounds_ptr + num_seqs)
    per = tl.maximum(tl.cdiv(total, tl.num_programs(0)), 1)
    t_start = prog * per
    t_end = tl.minimum(t_start + per, total)
    if t_start >= t_end:
        return

    h = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + h
    h_ok = h < GROUP
    d = tl.arange(0, HEAD_DIM)
    head_off = kv_head * stride_kvh
    first_seq = tl.load(tile_seq_ptr + t_start)
    seq = first_seq
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for t in range(t_start, t_end):
        next_seq = tl.load(tile_seq_ptr + t)
        start = tl.load(tile_pos_ptr + t) * BLOCK_N
        new_seq = next_seq != seq
        if new_seq:
            _finish_seq(seq, prog, per, acc, l_i, m_i, out_ptr, part_out_ptr, part_lse_ptr,
                        query_start_loc_ptr, tile_bounds_ptr, kv_head, parts_per_head, stride_ot, stride_oh,
                        GROUP, BLOCK_H, HEAD_DIM)
        # a new sequence starts from a running max of -inf, which scales l_i and acc to zero
        m_i = tl.where(new_seq, float("-inf"), m_i)
        seq = next_seq
        tok = tl.load(query_start_loc_ptr + seq).to(tl.int64)
        q = tl.load(q_ptr + tok * stride_qt + (head * stride_qh)[:, None] + d[None, :],
                    mask=h_ok[:, None], other=0.0)
        bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, start,
                                     tl.load(seq_lens_ptr + seq), m_i, qk_scale, stride_blk, stride_row,
                                     HEAD_DIM, BLOCK_N, BLOCK_SIZE, True, False, PRECISION)
    _finish_seq(seq, prog, per, acc, l_i, m_i, out_ptr, part_out_ptr, part_lse_ptr, query_start_loc_ptr,
                tile_bounds_ptr, kv_head, parts_per_head, stride_ot, stride_oh, GROUP, BLOCK_H, HEAD_DIM)
    num_kv_heads = tl.num_programs(1)
    _merge_if_last(first_seq, per, out_ptr, part_out_ptr, part_lse_ptr, counters_ptr, query_start_loc_ptr,
                   tile_bounds_ptr, kv_head, num_kv_heads, parts_per_head, stride_ot, stride_oh,
                   GROUP, BLOCK_H, HEAD_DIM)
    if seq != first_seq:
        _merge_if_last(seq, per, out_ptr, part_out_ptr, part_lse_ptr, counters_ptr, query_start_loc_ptr,
                       tile_bounds_ptr, kv_head, num_kv_heads, parts_per_head, stride_ot, stride_oh,
                       GROUP, BLOCK_H, HEAD_DIM)


@functools.cache
def default_num_programs(num_kv_heads: int, device: torch.device) -> int:
    """Programs per KV head: about three per SM in all (each holds two 32 KiB K/V stages). Cached:
    every layer of every step asks."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    return max(1, 3 * sms // num_kv_heads)


def paged_attention_decode_balanced(q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                                    scale: float, out: torch.Tensor | None = None,
                                    plan: DecodePlan | None = None,
                                    workspace: DecodeWorkspace | None = None, *,
                                    num_programs: int | None = None, block_n: int | None = None,
                                    num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Decode attention as paged_attention_decode computes it (one query row per sequence at
    query_start_loc[i]; a sequence without a query row is skipped), with the work balanced over
    the batch. Pass the step's plan (plan_decode, shared by every layer) and a workspace held
    across calls (its counters, one per sequence and KV head, serve either decode kernel); without
    them both are made for this call. num_programs (per KV head), block_n,
    num_warps and num_stages are for tuning benchmarks. No host syncs: safe in a CUDA graph."""
    group, block_size = check_attention_shapes(q, kv_cache)
    num_seqs = metadata.num_seqs
    num_kv_heads, head_dim = kv_cache.shape[3], q.shape[2]
    block_n = block_n or default_block_n(head_dim)
    if plan is None:
        plan = plan_decode(metadata, block_n, block_size)
    elif plan.block_n != block_n:
        raise ValueError(f"the plan was made for tiles of {plan.block_n} keys, not {block_n}")
    num_programs = num_programs or default_num_programs(num_kv_heads, q.device)
    if num_programs < 1:
        raise ValueError(f"num_programs must be positive, got {num_programs}")
    if out is None:
        out = torch.empty_like(q)
    parts_per_head = num_programs + num_seqs
    part_out = torch.empty(q.shape[1] * parts_per_head, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(q.shape[1] * parts_per_head, dtype=torch.float32, device=q.device)
    counters = (workspace or DecodeWorkspace()).get(num_seqs * num_kv_heads, q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _balanced_decode_kernel[(num_programs, num_kv_heads)](
        q, k_cache, v_cache, out, part_out, part_lse, counters,
        metadata.block_tables, metadata.seq_lens, metadata.query_start_loc, plan.tile_bounds, plan.tile_seq,
        plan.tile_pos, num_seqs, parts_per_head, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), metadata.block_tables.stride(0),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_N=block_n,
        BLOCK_SIZE=block_size, PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out
