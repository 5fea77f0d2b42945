"""Varlen paged attention (prefill, chunked prefill, mixed batches) and its torch reference.

Each sequence's query_len new tokens sit at the end of its seq_len tokens of context; K/V are read
from the paged cache through the block table. One program owns BLOCK_Q query tokens times the
GROUP query heads that share one KV head, so K/V tiles are loaded once per group (GQA packing)
and short queries still fill a BLOCK_M = BLOCK_Q * GROUP row tile. The decode kernel, which
splits long contexts over several programs, is in decode_attention.py.
"""
import math

import torch
import triton
import triton.language as tl

from corral.kernels.attention_metadata import AttentionMetadata

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, start, kv_end, q_pos, qk_scale,
                 stride_blk, stride_row,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step of q [M, D] over keys start..start+BLOCK_N of one sequence.
    MASKED: the tile may cross kv_end (or, CAUSAL, some row's own position)."""
    n = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    if MASKED:
        n_ok = n < kv_end
        blk = tl.load(bt_ptr + n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_ptr + n // BLOCK_SIZE).to(tl.int64)
    off = blk * stride_blk + (n % BLOCK_SIZE) * stride_row + head_off
    if MASKED:
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptr + off[:, None] + d[None, :])
    k = k.to(q.dtype)  # an fp8 cache's keys; a no-op in the model's dtype
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        ok = n_ok[None, :]
        if CAUSAL:
            ok = ok & (n[None, :] <= q_pos[:, None])
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptr + off[:, None] + d[None, :])
    v = v.to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


# A mixed batch's prompts are a slice of the step's metadata (AttentionMetadata.prefills), whose start moves
# step by step, and its block table's width is its longest sequence's: specialized on the alignment of those
# pointers or on that width, a running server would compile new variants as they come.
@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr", "query_start_loc_ptr"])
def _varlen_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_blk, stride_row, stride_kvh, stride_bt,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    q_block = tl.num_programs(1) - 1 - tl.program_id(1)  # the longest causal rows start first
    kv_head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_len = seq_len - q_len

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_P2
    m = tl.arange(0, BLOCK_M)
    q_idx = q_block * BLOCK_Q + m // GROUP_P2
    g = m % GROUP_P2
    row_ok = (q_idx < q_len) & (g < GROUP)
    tok = (q_start + q_idx).to(tl.int64)
    head = kv_head * GROUP + g
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + (tok * stride_qt + head * stride_qh)[:, None] + d[None, :],
                mask=row_ok[:, None], other=0.0)
    q_pos = ctx_len + q_idx

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = kv_head * stride_kvh
    first_pos = ctx_len + q_block * BLOCK_Q
    kv_end = tl.minimum(seq_len, first_pos + BLOCK_Q)
    # tiles below every row's own position need no mask
    full_end = (first_pos + 1) // BLOCK_N * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, start, kv_end,
                                     q_pos, qk_scale, stride_blk, stride_row, HEAD_DIM, BLOCK_N,
                                     BLOCK_SIZE, False, True, PRECISION)
    for start in range(full_end, kv_end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, head_off, start, kv_end,
                                     q_pos, qk_scale, stride_blk, stride_row, HEAD_DIM, BLOCK_N,
                                     BLOCK_SIZE, True, True, PRECISION)
    out = acc / l_i[:, None]
    tl.store(out_ptr + (tok * stride_ot + head * stride_oh)[:, None] + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def check_attention_shapes(q: torch.Tensor, kv_cache: torch.Tensor) -> tuple[int, int]:
    """Returns (group size, block size); raises ValueError for what the kernels do not handle."""
    num_q_heads, head_dim = q.shape[1:]
    block_size, num_kv_heads, cache_dim = kv_cache.shape[2:]
    if num_q_heads % num_kv_heads or cache_dim != head_dim:
        raise ValueError(f"q [{num_q_heads}, {head_dim}] does not fit kv heads [{num_kv_heads}, "
                         f"{cache_dim}]: q heads must be a multiple of kv heads")
    if head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
        raise ValueError(f"head_dim {head_dim} unsupported: use a power of two in 16..256")
    if block_size & (block_size - 1) or block_size < 16:
        raise ValueError(f"block_size {block_size} unsupported: use a power of two >= 16")
    if q.stride(2) != 1 or not kv_cache[0].is_contiguous() or kv_cache.dtype not in (q.dtype, torch.float8_e4m3fn):
        raise ValueError("q needs a contiguous head dim, kv_cache contiguous halves in q's dtype or float8_e4m3fn")
    return num_q_heads // num_kv_heads, block_size


def attention_output(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`out` checked for the kernels' stores (q's shape and dtype, a contiguous head dim), or a new
    tensor like q."""
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be {list(q.shape)} {q.dtype} with a contiguous head dim, got "
                         f"{list(out.shape)} {out.dtype} with strides {out.stride()}")
    return out


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def paged_attention_prefill(q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                            scale: float, out: torch.Tensor | None = None, *, block_m: int | None = None,
                            block_n: int | None = None, num_warps: int | None = None,
                            num_stages: int | None = None) -> torch.Tensor:
    """Causal attention of q [T, Hq, D] over each sequence's cached context. Any query lengths.
    block_m (query rows per program: query tokens times the padded GQA group), block_n (keys per
    tile), num_warps and num_stages override the defaults, for tuning benchmarks."""
    group, block_size = check_attention_shapes(q, kv_cache)
    head_dim = q.shape[2]
    out = attention_output(q, out)
    group_p2 = triton.next_power_of_2(group)
    # H200 bf16, D=128 (benchmarks.kernels --prefill-sweep): 64 x 64 tiles on 4 warps, 2 stages, at
    # least as fast as 128 x 128 on 8 warps, 3 stages at every shape and 19-24% faster on B1's
    # prefill chunks; D=256 takes half the keys per tile for shared memory
    block_m, block_n = block_m or 64, block_n or (32 if head_dim > 128 else 64)
    warps, stages = num_warps or 4, num_stages or 2
    block_m = min(block_m, max(16, triton.next_power_of_2(metadata.max_query_len * group_p2)))
    block_q = max(1, block_m // group_p2)
    grid = (metadata.num_seqs, triton.cdiv(metadata.max_query_len, block_q), kv_cache.shape[3])
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _varlen_kernel[grid](
        q, k_cache, v_cache, out, metadata.block_tables, metadata.seq_lens,
        metadata.query_start_loc, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), metadata.block_tables.stride(0),
        GROUP=group, GROUP_P2=group_p2, BLOCK_Q=block_q, HEAD_DIM=head_dim, BLOCK_N=block_n,
        BLOCK_SIZE=block_size, PRECISION=dot_precision(q.dtype),
        num_warps=warps if block_m >= 64 else 4, num_stages=stages,
    )
    return out


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                        scale: float) -> torch.Tensor:
    """Straightforward torch reference: gather each sequence's context, mask, softmax in fp32."""
    num_q_heads, head_dim = q.shape[1:]
    block_size, num_kv_heads = kv_cache.shape[2:4]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = metadata.query_start_loc.tolist()
    for i, seq_len in enumerate(metadata.seq_lens.tolist()):
        q_i = q[starts[i]:starts[i + 1]].float()                        # [L, Hq, D]
        q_len = q_i.shape[0]
        blocks = metadata.block_tables[i, :math.ceil(seq_len / block_size)].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        k = k.repeat_interleave(group, dim=1)                           # [S, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q_i, k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        scores = scores.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[i]:starts[i + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out
