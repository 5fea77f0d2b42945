import math

import pytest
import torch
import triton
import triton.language as tl

from corral.kernels.sampling import _philox4x32_10, gumbel_argmax

# tokens on both sides of a 2048-column boundary, the rest at -inf or far below
HOT = {7: 2.0, 2047: 0.0, 2048: 1.5, 2099: -1.0}


def hot_logits(num_rows: int, vocab_size: int = 2100, dtype=torch.float32, device="cpu") -> torch.Tensor:
    logits = torch.full((num_rows, vocab_size), float("-inf"))
    logits[:, 100:200] = -40.0  # reachable in principle, never in practice
    for token, value in HOT.items():
        logits[:, token] = value
    return logits.to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_rows_take_the_first_maximum(dtype, device):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4100, generator=gen).to(dtype)
    logits[1, [5, 3000, 4099]] = 50.0  # ties across chunks: the first wins
    logits[2, [2048, 2049]] = 50.0
    logits[3, :] = float("-inf")
    logits[3, 4099] = 0.0  # the maximum in the last, partial chunk
    logits = logits.to(device)
    sampled = gumbel_argmax(logits, torch.zeros(6, device=device), seed=123)
    assert sampled.tolist() == logits.float().argmax(dim=-1).tolist()
    assert sampled[1] == 5 and sampled[2] == 2048 and sampled[3] == 4099


def test_draws_follow_softmax_of_logits_over_temperature(device):
    num_rows, temperature = 800, 0.5
    sampled = gumbel_argmax(hot_logits(num_rows, device=device),
                            torch.full((num_rows,), temperature, device=device), seed=7).cpu()
    tokens = torch.tensor(list(HOT))
    probs = torch.softmax(torch.tensor(list(HOT.values())) / temperature, dim=0)
    assert set(sampled.tolist()) <= set(HOT)
    freq = (sampled[:, None] == tokens[None, :]).float().mean(0)
    # four standard deviations of a frequency over 800 draws is at most 0.071; T = 1 is off by 0.16
    torch.testing.assert_close(freq, probs, atol=0.071, rtol=0)


def test_draws_pass_a_chi_square_test(device):
    """Tokens come in pairs of equal logits, so noise shared between neighbouring columns (one
    Philox word reused for a quad, say) leaves one token of a pair never drawn and fails by far:
    its Pearson statistic is above 200, where correct draws stay below 100 but once in 20,000."""
    num_rows, vocab_size, temperature = 300, 26, 0.7
    levels = torch.linspace(-1.5, 1.5, vocab_size // 2)
    logits = levels[torch.randperm(vocab_size // 2, generator=torch.Generator().manual_seed(0))].repeat_interleave(2)
    logits[[7, 24]] = float("-inf")  # 24 shares the last, partly masked quad with 25
    sampled = gumbel_argmax(logits.expand(num_rows, vocab_size).contiguous().to(device),
                            torch.full((num_rows,), temperature, device=device), seed=11).cpu()
    counts = torch.bincount(sampled, minlength=vocab_size).double()
    expected = num_rows * torch.softmax(logits.double() / temperature, dim=0)
    assert counts[7] == counts[24] == 0
    finite = expected > 0
    chi_square = ((counts[finite] - expected[finite]) ** 2 / expected[finite]).sum().item()
    assert chi_square < 100, chi_square  # 23 degrees of freedom


@triton.jit(do_not_specialize=["seed", "row"])
def _philox_pair(out_ptr, seed, row, N: tl.constexpr):
    quad = 1000 * tl.arange(0, N) + 12345
    ours = _philox4x32_10(quad, row, seed, True)
    theirs = tl.randint4x(seed, (row.to(tl.int64) << 32) + quad)
    for k in tl.static_range(4):
        tl.store(out_ptr + k * N + tl.arange(0, N), ours[k])
        tl.store(out_ptr + (4 + k) * N + tl.arange(0, N), theirs[k])


@pytest.mark.parametrize("seed,row", [(0, 0), (7, 3), (2**31 - 1, 100_000), (-5, 1)])
def test_philox_is_triton_randint4x(seed, row, device):
    out = torch.empty(8, 16, dtype=torch.int32, device=device)
    _philox_pair[(1,)](out, seed, row, N=16)
    assert torch.equal(out[:4], out[4:])


def test_mixed_rows_and_seeds(device):
    logits = hot_logits(64, dtype=torch.bfloat16, device=device)
    temperature = torch.tensor([0.0, 1.0] * 32, device=device)
    first = gumbel_argmax(logits, temperature, seed=1)
    assert (first[0::2] == 7).all()  # greedy rows
    assert torch.equal(first, gumbel_argmax(logits, temperature, seed=1))
    assert not torch.equal(first[1::2], gumbel_argmax(logits, temperature, seed=2)[1::2])


def test_rejects_strided_rows(device):
    with pytest.raises(ValueError, match="contiguous"):
        gumbel_argmax(torch.randn(8, 4, device=device).t(), torch.ones(4, device=device), seed=0)


@pytest.mark.gpu
def test_sampler_uses_one_pass_on_cuda_with_temperature_only():
    from corral.engine.sampler import Sampler, SamplingMetadata
    num_rows, temperature = 4096, 0.5
    logits = hot_logits(num_rows, vocab_size=151936, dtype=torch.bfloat16, device="cuda")
    md = SamplingMetadata(temperature=torch.full((num_rows,), temperature, device="cuda"),
                          all_greedy=False, all_random=True)
    sampler = Sampler(seed=0)
    assert sampler._one_pass(logits, md)
    sampled = sampler(logits, md).sampled_token_ids.cpu()
    tokens = torch.tensor(list(HOT))
    probs = torch.softmax(torch.tensor(list(HOT.values())) / temperature, dim=0)
    freq = (sampled[:, None] == tokens[None, :]).float().mean(0)
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


@pytest.mark.gpu
def test_rare_tokens_keep_their_probability():
    """One token at 0 and 151,935 at -16: each of those has probability 1.1e-7, and wins only with
    an exponential below about that, which uniforms rounded near 1 in float32 cannot give (the
    kernel that drew u that way sampled them 0.0103 of the time instead of 0.0168)."""
    num_rows, vocab_size, calls = 1024, 151936, 100
    logits = torch.full((num_rows, vocab_size), -16.0, dtype=torch.bfloat16, device="cuda")
    logits[:, 0] = 0.0
    temperature = torch.ones(num_rows, device="cuda")
    tail = sum((gumbel_argmax(logits, temperature, seed) != 0).sum().item() for seed in range(calls))
    n = num_rows * calls
    p = (vocab_size - 1) * math.exp(-16) / (1 + (vocab_size - 1) * math.exp(-16))
    assert abs(tail / n - p) < 5 * math.sqrt(p * (1 - p) / n)
