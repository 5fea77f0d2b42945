import pytest
import torch

from corral.kernels.sampling import gumbel_argmax

# tokens on both sides of the kernel's first 2048-wide chunk boundary, the rest at -inf or far below
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
