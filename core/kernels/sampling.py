"""Temperature sampling in one pass over the logits (the Gumbel-max trick).

argmax(logits / T + G), G drawn from Gumbel(0, 1), is a draw from softmax(logits / T): the same
distribution as the sampler's exponential race over the probabilities, without materialising
them. One program per row streams its logits once, draws its noise with Triton's Philox
generator, and keeps a running argmax; a row with temperature below `greedy_eps` takes no noise
and gets the plain argmax (the first index among equal maxima).
"""
import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["seed"])
def _gumbel_argmax_kernel(logits_ptr, temperature_ptr, out_ptr, seed, stride, vocab_size, greedy_eps,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0)
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature < greedy_eps
    inv_t = 1.0 / tl.where(greedy, 1.0, temperature)
    base = logits_ptr + row.to(tl.int64) * stride
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK], tl.int32)
    for start in range(0, vocab_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < vocab_size, other=float("-inf")).to(tl.float32) * inv_t
        if not greedy:
            u = tl.rand(seed, row * vocab_size + cols)
            x += -tl.log(-tl.log(u))  # u == 0 gives -inf: never picked
        better = x > best  # strict: each lane keeps its first maximum
        best = tl.where(better, x, best)
        best_idx = tl.where(better, cols, best_idx)
    top = tl.max(best, 0)
    tl.store(out_ptr + row, tl.min(tl.where(best == top, best_idx, vocab_size), 0).to(tl.int64))


def gumbel_argmax(logits: torch.Tensor, temperature: torch.Tensor, seed: int,
                  greedy_eps: float = 1e-5) -> torch.Tensor:
    """logits [B, V] (any float dtype, rows contiguous), temperature [B] float32 -> [B] int64 token ids."""
    num_rows, vocab_size = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("gumbel_argmax needs logits with contiguous rows")
    if num_rows * vocab_size >= 2**31:
        raise ValueError(f"gumbel_argmax draws at most 2**31 noise values per call, got {num_rows} x {vocab_size}")
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows:
        _gumbel_argmax_kernel[(num_rows,)](logits, temperature, out, seed, logits.stride(0), vocab_size,
                                           greedy_eps, BLOCK=2048, num_warps=8)
    return out
