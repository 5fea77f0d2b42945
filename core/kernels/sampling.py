"""Temperature sampling in one pass over the logits (the Gumbel-max trick).

argmax(logits / T + G), G drawn from Gumbel(0, 1), is a draw from softmax(logits / T): the same
distribution as the sampler's exponential race over the probabilities, without materialising
them. One program per row streams its logits once and keeps a running argmax; a row with
temperature below `greedy_eps` takes no noise and gets the plain argmax (the first index among
equal maxima).

Noise: column c of row r takes word c % 4 of Philox4x32-10 at counter (c // 4, r) under the key
`seed`, so one Philox call serves four columns, no two (row, column) pairs share a word, and the
draw does not depend on the block size. A word w, read as u = (w + 1/2) / 2**32 in (0, 1), gives
the exponential E = -log(1 - u) (by a series where u is small, so that the small E, the ones that
win, keep their precision and E is never 0) and the key log2(e) * logits / T - log2(E), which is
log2(e) * (logits / T + Gumbel noise) up to a constant. -inf logits stay -inf. One word in 2**25
rounds u to 1.0 in float32 (E = inf, key -inf): that column is not picked, and a row whose every
finite logit drew such a word (only thinkable with one or two finite logits) falls back to the
first column. The next chunk's load is issued before the current chunk's noise is computed, to
overlap the two.
"""
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _philox4x32_10(c0, c1, seed, COMPILED: tl.constexpr):
    """Philox4x32-10 at counter (c0, c1, 0, 0) under key `seed`: `tl.randint4x(seed, c1 << 32 | c0)`
    bit for bit (a test checks it), written with 64-bit products so that each of a round's two
    multiplies is one wide multiply-add rather than a high and a low multiply."""
    if not COMPILED:  # the interpreter pays per operation, and randint4x has fewer
        return tl.randint4x(seed, (c1.to(tl.int64) << 32) + c0)
    seed = seed.to(tl.int64)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = c0.to(tl.uint32)
    c1 = c1.to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    for _ in tl.static_range(10):
        a = c0.to(tl.uint64) * 0xD2511F53
        b = c2.to(tl.uint64) * 0xCD9E8D57
        c0, c2 = (b >> 32).to(tl.uint32) ^ c1 ^ k0, (a >> 32).to(tl.uint32) ^ c3 ^ k1
        c1, c3 = b.to(tl.uint32), a.to(tl.uint32)
        k0 += 0x9E3779B9
        k1 += 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _gumbel(word, COMPILED: tl.constexpr):
    """-log2(E) for E = -log2(1 - u), u = (word + 1/2) / 2**32: Gumbel noise in units of log2, up
    to a constant. Below u = 2**-7 a series stands in for log2(1 - u), whose argument would round
    and whose fast log is only absolutely accurate; its relative error is below u**2 / 3 < 2e-5."""
    u = word.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    series = u * (LOG2E + u * (LOG2E / 2))
    if COMPILED:  # lg2.approx: absolute error below 2**-22, ample where it is used
        return -libdevice.fast_log2f(tl.where(u < 0.0078125, series, -libdevice.fast_log2f(1.0 - u)))
    else:  # the interpreter has no libdevice
        return -tl.log2(tl.where(u < 0.0078125, series, -tl.log2(1.0 - u)))


@triton.jit(do_not_specialize=["seed"])
def _gumbel_argmax_kernel(logits_ptr, temperature_ptr, out_ptr, seed, stride, vocab_size, greedy_eps,
                          BLOCK: tl.constexpr, COMPILED: tl.constexpr):
    QUADS: tl.constexpr = BLOCK // 4
    row = tl.program_id(0)
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature < greedy_eps
    scale = LOG2E / tl.where(greedy, LOG2E, temperature)
    base = logits_ptr + row.to(tl.int64) * stride
    best = tl.full([QUADS], float("-inf"), tl.float32)
    best_idx = tl.zeros([QUADS], tl.int32)
    cols = 4 * tl.arange(0, QUADS)[:, None] + tl.arange(0, 4)[None, :]  # [quad, word]
    x_next = tl.load(base + cols, mask=cols < vocab_size, other=float("-inf"))
    for start in range(0, vocab_size, BLOCK):
        x = x_next.to(tl.float32) * scale
        # the next chunk's load is in flight while this one is worked on
        x_next = tl.load(base + BLOCK + cols, mask=cols + BLOCK < vocab_size, other=float("-inf"))
        cols += BLOCK
        quad = start // 4 + tl.arange(0, QUADS)
        even, odd = tl.split(tl.reshape(x, [QUADS, 2, 2]))
        x0, x2 = tl.split(even)  # column 4 * quad + 0, + 2
        x1, x3 = tl.split(odd)
        if not greedy:
            r0, r1, r2, r3 = _philox4x32_10(quad, row, seed, COMPILED)
            x0 += _gumbel(r0, COMPILED)
            x1 += _gumbel(r1, COMPILED)
            x2 += _gumbel(r2, COMPILED)
            x3 += _gumbel(r3, COMPILED)
        for k in tl.static_range(4):  # each lane takes its columns in order
            key = (x0, x1, x2, x3)[k]
            better = key > best  # strict: each lane keeps its first maximum
            best = tl.where(better, key, best)
            best_idx = tl.where(better, 4 * quad + k, best_idx)
    top = tl.max(best, 0)
    tl.store(out_ptr + row, tl.min(tl.where(best == top, best_idx, vocab_size), 0).to(tl.int64))


def gumbel_argmax(logits: torch.Tensor, temperature: torch.Tensor, seed: int,
                  greedy_eps: float = 1e-5) -> torch.Tensor:
    """logits [B, V] (any float dtype, rows contiguous), temperature [B] float32 -> [B] int64 token ids."""
    num_rows, vocab_size = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("gumbel_argmax needs logits with contiguous rows")
    if vocab_size > 2**30:  # column ids are int32; the noise counter (column // 4, row) cannot wrap
        raise ValueError(f"gumbel_argmax takes at most 2**30 columns, got {vocab_size}")
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows:
        block = min(4096, max(64, triton.next_power_of_2(vocab_size)))
        _gumbel_argmax_kernel[(num_rows,)](logits, temperature, out, seed, logits.stride(0), vocab_size,
                                           greedy_eps, BLOCK=block,
                                           COMPILED=os.environ.get("TRITON_INTERPRET") != "1",
                                           num_warps=max(1, block // 256))
    return out
