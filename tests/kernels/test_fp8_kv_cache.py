"""An fp8 (e4m3) KV cache: the store saturates and rounds as torch does, and both attention kernels read it as
the reference does."""
import pytest
import torch

from corral.kernels.decode_attention import paged_attention_decode
from corral.kernels.kv_cache import store_kv_cache, store_kv_cache_ref
from corral.kernels.paged_attention import paged_attention_prefill, paged_attention_ref

FP8 = torch.float8_e4m3fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_rounds_like_torch_and_saturates_past_the_range(dtype, device):
    num_tokens, heads, dim, block_size = 37, 2, 64, 16
    k = (torch.randn(num_tokens, heads, dim) * 50).to(device, dtype)
    v = (torch.randn(num_tokens, heads, dim) * 50).to(device, dtype)
    k[3], v[5, 1] = 1e4, -3e4  # past float8 e4m3's 448
    slots = torch.randperm(4 * block_size)[:num_tokens].to(device)
    cache = torch.zeros(2, 4, block_size, heads, dim, dtype=FP8, device=device)
    expected = cache.clone()
    store_kv_cache(k, v, cache, slots)
    store_kv_cache_ref(k, v, expected, slots)
    torch.testing.assert_close(cache.float(), expected.float(), rtol=0, atol=0)
    flat = cache.float().view(2, -1, heads, dim)
    assert flat[0, slots[3]].eq(448).all() and flat[1, slots[5], 1].eq(-448).all()
    assert not flat.isnan().any()


def test_a_nan_stays_nan_and_infinities_saturate_as_torch_stores_them(device):
    k = torch.ones(4, 1, 16, device=device)
    v = torch.ones(4, 1, 16, device=device)
    k[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    slots = torch.arange(4, device=device)
    cache = torch.zeros(2, 1, 4, 1, 16, dtype=FP8, device=device)
    expected = cache.clone()
    store_kv_cache(k, v, cache, slots)
    store_kv_cache_ref(k, v, expected, slots)
    stored = cache.float()[0, 0, 0, 0, :3]
    assert stored[0].isnan() and stored[1:].tolist() == [448.0, -448.0]
    torch.testing.assert_close(cache.float(), expected.float(), rtol=0, atol=0, equal_nan=True)


def _fp8(cache: torch.Tensor) -> torch.Tensor:
    return cache.float().clamp(-448, 448).to(FP8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4])
def test_varlen_attention_reads_an_fp8_cache_as_the_reference(group, dtype, make_batch):
    query_lens, seq_lens = [1, 7, 33, 20], [1, 40, 33, 85]
    cache, metadata = make_batch(query_lens, seq_lens, block_size=16, num_kv_heads=2, head_dim=64, dtype=dtype)
    q = torch.randn(sum(query_lens), 2 * group, 64, generator=torch.Generator().manual_seed(1)).to(cache.device, dtype)
    fp8_cache = _fp8(cache)
    out = paged_attention_prefill(q, fp8_cache, metadata, 0.125)
    torch.testing.assert_close(out, paged_attention_ref(q, fp8_cache, metadata, 0.125), rtol=2e-2, atol=2e-2)
    # and the rounding costs little against the cache in the model's dtype: e4m3 keeps 3 mantissa bits
    exact = paged_attention_ref(q, cache, metadata, 0.125).float()
    assert (out.float() - exact).norm() / exact.norm() < 0.08


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_attention_reads_an_fp8_cache_as_the_reference(num_splits, make_decode_batch):
    q, cache, metadata = make_decode_batch([1, 16, 17, 65, 200], 4, 64, torch.bfloat16, 16)
    fp8_cache = _fp8(cache)
    out = paged_attention_decode(q, fp8_cache, metadata, 0.125, num_splits=num_splits, split_len=1)
    torch.testing.assert_close(out, paged_attention_ref(q, fp8_cache, metadata, 0.125), rtol=2e-2, atol=2e-2)


def test_a_cache_in_another_16_bit_type_is_refused(make_decode_batch):
    q, cache, metadata = make_decode_batch([5], 2, 64, torch.bfloat16, 16)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        paged_attention_decode(q, cache.to(torch.float16), metadata, 0.125)
