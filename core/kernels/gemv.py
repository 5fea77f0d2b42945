"""Skinny linear layers for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M from 1 to 64.

Purely bandwidth bound: every weight byte is read once and each program streams its tiles of W,
rows contiguous in K. Grid (cdiv(N, BLOCK_N), SPLIT_K): a program takes BLOCK_N rows of W over
one slice of K (a whole number of BLOCK_K chunks), accumulating in fp32: for one token an
elementwise product summed over K, for more a tl.dot with the tokens padded to a power of two of
at least 16. Where the N tiles alone would leave the GPU short of programs, K is split: each
program writes its fp32 partial to a workspace and counts its arrival on a per-tile counter; the
last to arrive sums the partials, adds the bias, writes y and resets the counter to zero, so one
launch does it all and replays in a CUDA graph.
"""
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from corral.kernels.arrival import last_to_arrive, reset

MAX_M = 64


@triton.jit
def _write_out(acc, b_ptr, y_ptr, rn, rm, N, stride_ym, mask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + rm[None, :] * stride_ym + rn[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _skinny_linear_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, count_ptr,
    M, N, K, k_per_split, split_k, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    # rows past N (and token rows past M) re-read the last real one, so the loads need no mask;
    # what they compute is never stored
    w_rows = tl.minimum(rn, N - 1).to(tl.int64) * stride_wn
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    k_full = k_start + (k_end - k_start) // BLOCK_K * BLOCK_K
    w_ptrs = w_ptr + w_rows[:, None] + (k_start + rk)[None, :]

    if BLOCK_M > 1:
        # y^T tile = W tile @ x^T: W's rows fill the MMA's M side, the (padded) tokens its N side
        x_ptrs = x_ptr + (tl.minimum(rm, M - 1) * stride_xm)[None, :] + (k_start + rk)[:, None]
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for _ in tl.range(k_start, k_full, BLOCK_K, num_stages=NUM_STAGES):
            acc = tl.dot(tl.load(w_ptrs), tl.load(x_ptrs), acc)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        if not EVEN_K:
            for k in range(k_full, k_end, BLOCK_K):  # at most once: the ragged end of K
                k_ok = k + rk < k_end
                w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
                acc = tl.dot(w, tl.load(x_ptrs, mask=k_ok[:, None], other=0.0), acc)
    else:
        # one token: a 2-D accumulator, summed over K once at the end (no cross-thread
        # reduction per step)
        x_ptrs = x_ptr + k_start + rk
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for _ in tl.range(k_start, k_full, BLOCK_K, num_stages=NUM_STAGES):
            acc2 += tl.load(w_ptrs).to(tl.float32) * tl.load(x_ptrs).to(tl.float32)[None, :]
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        if not EVEN_K:
            for k in range(k_full, k_end, BLOCK_K):
                k_ok = k + rk < k_end
                w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
                acc2 += w.to(tl.float32) * tl.load(x_ptrs, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        acc = tl.sum(acc2, 1)[:, None]

    out_mask = (rn < N)[:, None] & (rm < M)[None, :]
    if SPLIT:
        part_rows = (pid_k * M + rm).to(tl.int64) * N
        tl.store(part_ptr + part_rows[None, :] + rn[:, None], acc, mask=out_mask)
        if last_to_arrive(count_ptr + pid_n, split_k):
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            part_ptrs = part_ptr + rm.to(tl.int64)[None, :] * N + rn[:, None]
            for _ in range(0, split_k):
                acc += tl.load(part_ptrs, mask=out_mask, other=0.0, cache_modifier=".cg")
                part_ptrs += M * N
            _write_out(acc, b_ptr, y_ptr, rn, rm, N, stride_ym, out_mask, HAS_BIAS)
            reset(count_ptr + pid_n)
    else:
        _write_out(acc, b_ptr, y_ptr, rn, rm, N, stride_ym, out_mask, HAS_BIAS)


def block_m(m: int) -> int:
    """Token rows per program: 1 for the elementwise path, else m padded for tl.dot."""
    return 1 if m == 1 else max(16, triton.next_power_of_2(m))


class SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


def choose_config(m: int, n: int, k: int, num_sms: int = 132, smem: int = 227 * 1024, *,
                  block_n: int | None = None, block_k: int | None = None, split_k: int | None = None,
                  num_warps: int | None = None, num_stages: int | None = None) -> SkinnyConfig:
    """The launch configuration for x [m, k] @ W[n, k]^T (16-bit) on a GPU of num_sms SMs and
    smem bytes of shared memory per program; any argument given overrides its default. Tuned with
    benchmarks.gemv on an H200 (132 SMs) at the Qwen3-0.6B/4B and Llama-2-7B decode shapes, M 1-8;
    the same tiles were checked at M 16-64 (Qwen3-4B: 1.10x cuBLAS up to 32 rows, 1.03x at 64).

    M == 1, an elementwise product summed over K: tiles of 8 rows by 512 of K (1 KiB of each row
    per step) on 4 warps, with 4 pipeline stages where the programs number fewer than 4 per SM and
    each takes 4 or more steps; where N >= 64 * SMs, 32 x 256 tiles on 8 warps. M > 1, tl.dot
    with the tokens padded (block_m; tensor cores keep the work free of the FMA per weight and token
    that the elementwise form would spend on CUDA cores; looping that form over 2 to 4 tokens
    measured slower): 64 x 128 tiles on 4 warps, 6 stages; where N >= 64 * SMs, 128 x 64 on 8
    warps, 4 stages; where N < 16 * SMs, 32 x 256 on 4 warps, 5 stages. Stages are cut to what
    shared memory holds. BLOCK_K shrinks to K's next power of two for short rows.

    SPLIT_K: floor(SMs / N tiles), about one program per SM, at least 1; unless the tiles number
    fewer than SMs / 4, no slice gets under 64 Ki weights (128 KiB). At most one slice per BLOCK_K
    chunk of K, evened out so that the slices are whole chunks and none is empty (a forced split_k
    is evened out the same way). More, shorter programs measured slower: the partial sums and the
    arrival counting cost more than the latency they hide."""
    if not 1 <= m <= MAX_M:
        raise ValueError(f"skinny_linear takes 1 to {MAX_M} rows (F.linear suits more), got {m}")
    dot = m > 1
    if dot:
        default_n, default_k, warps, stages = (128, 64, 8, 4) if n >= 64 * num_sms else \
            (32, 256, 4, 5) if n < 16 * num_sms else (64, 128, 4, 6)
    else:
        default_n, default_k, warps, stages = (32, 256, 8, 1) if n >= 64 * num_sms else (8, 512, 4, 4)
    block_n = block_n or default_n
    block_k = block_k or min(default_k, max(16, triton.next_power_of_2(k)))
    for name, value in (("block_n", block_n), ("block_k", block_k), ("num_warps", num_warps or 1)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two, got {value}")
    if dot and min(block_n, block_k) < 16:
        raise ValueError(f"tl.dot (m > 1) needs block_n and block_k of at least 16, got {block_n}, {block_k}")
    tiles, chunks = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    if split_k is None:
        split_k = max(1, num_sms // tiles)
        if 4 * tiles >= num_sms:
            split_k = max(1, min(split_k, block_n * k // 2**16))
    elif split_k < 1:
        raise ValueError(f"split_k must be positive, got {split_k}")
    split_k = min(split_k, max(chunks, 1))
    split_k = triton.cdiv(chunks, triton.cdiv(chunks, split_k)) if chunks else 1
    if num_warps is None:
        num_warps = warps
    if num_stages is None:
        num_stages = stages
        if not dot and (tiles * split_k >= 4 * num_sms or triton.cdiv(chunks, split_k) < 4):
            num_stages = 1
        stage_bytes = (block_n + (block_m(m) if dot else 1)) * block_k * 2
        while num_stages > 2 and num_stages * stage_bytes > smem - 16 * 1024:
            num_stages -= 1
    return SkinnyConfig(block_n, block_k, split_k, num_warps, num_stages)


class DeviceLimits(NamedTuple):
    num_sms: int
    smem: int  # shared memory a program may use, bytes


def device_limits(device: torch.device) -> DeviceLimits:
    """The device's SMs and shared memory per program (an H100/H200's where it is no GPU)."""
    if device.type != "cuda":
        return DeviceLimits(132, 227 * 1024)
    props = torch.cuda.get_device_properties(device)
    return DeviceLimits(props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", 99 * 1024))


class SkinnyLinearWorkspace:
    """Split-K scratch kept across calls and CUDA-graph replays: for each (device, M, N, split_k,
    N tiles), fp32 partials [split_k, M, N] and one int32 arrival counter per tile, zero between
    launches (each launch leaves them so). Launches in one stream may share a workspace; launches
    that can run at the same time (other streams) need one each. Create the buffers outside a
    graph capture (a warm-up call) so that the graph only reuses them. Also caches each device's
    limits."""

    def __init__(self):
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._limits: dict[torch.device, DeviceLimits] = {}

    def limits(self, device: torch.device) -> DeviceLimits:
        if device not in self._limits:
            self._limits[device] = device_limits(device)
        return self._limits[device]

    def buffers(self, device: torch.device, m: int, n: int, split_k: int,
                tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, m, n, split_k, tiles)
        if key not in self._buffers:
            self._buffers[key] = (torch.empty(split_k * m * n, dtype=torch.float32, device=device),
                                  torch.zeros(tiles, dtype=torch.int32, device=device))
        return self._buffers[key]


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  workspace: SkinnyLinearWorkspace | None = None, *, out: torch.Tensor | None = None,
                  block_n: int | None = None, block_k: int | None = None, split_k: int | None = None,
                  num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K] of 1 to 64 rows in all, weight [N, K] (rows
    contiguous), bias [N], fp16 or bf16, all one dtype; fp32 accumulation, the result in x's dtype:
    `out` [..., N] (contiguous) if given, else a new tensor. The launch follows choose_config
    (see there); block_n, block_k, split_k, num_warps and num_stages force parts of it, for tuning.

    A split-K launch needs a workspace: pass one held across calls (and CUDA-graph replays);
    without one, fresh buffers are zeroed for this call. No host syncs: safe to capture in a CUDA
    graph once the workspace holds this shape's buffers."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"skinny_linear takes fp16 or bf16, got x of {x.dtype}")
    if weight.dim() != 2 or x.dim() < 1:
        raise ValueError(f"need x [..., K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} disagree on K")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"x, weight and bias must share one dtype, got {x.dtype}, {weight.dtype}"
                         f"{'' if bias is None else ', ' + str(bias.dtype)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if bias is not None:
        bias = bias.contiguous()  # the kernel reads it at unit stride
    if any(t is not None and t.device != x.device for t in (weight, bias, out)):
        raise ValueError("x, weight, bias and out must be on one device")
    if k > 1 and weight.stride(1) != 1:
        raise ValueError("weight rows must be contiguous (weight.stride(1) == 1)")
    m = math.prod(x.shape[:-1])
    out_shape = (*x.shape[:-1], n)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    elif out.shape != out_shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {x.dtype} of shape {out_shape}")
    if m == 0 or n == 0:
        return out
    rows = x.reshape(m, k)
    if k > 1 and rows.stride(1) != 1:
        rows = rows.contiguous()
    device = x.device
    limits = workspace.limits(device) if workspace is not None else device_limits(device)
    cfg = choose_config(m, n, k, *limits, block_n=block_n, block_k=block_k, split_k=split_k,
                        num_warps=num_warps, num_stages=num_stages)
    tiles = triton.cdiv(n, cfg.block_n)
    partials = counters = out  # placeholders when K is not split
    if cfg.split_k > 1:
        partials, counters = (workspace or SkinnyLinearWorkspace()).buffers(device, m, n, cfg.split_k, tiles)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.block_k), cfg.split_k) * cfg.block_k
    _skinny_linear_kernel[(tiles, cfg.split_k)](
        rows, weight, bias if bias is not None else out, out, partials, counters,
        m, n, k, k_per_split, cfg.split_k, rows.stride(0), weight.stride(0), n,
        BLOCK_M=block_m(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        EVEN_K=k % cfg.block_k == 0, SPLIT=cfg.split_k > 1, HAS_BIAS=bias is not None,
        NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
