import pytest
import torch

from corral.kernels.kv_cache import store_kv_cache, store_kv_cache_ref


def _store_both(num_tokens, num_kv_heads, head_dim, block_size, dtype, device, skip=()):
    num_blocks = num_tokens // block_size + 4
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[list(skip)] = -1
    slots = slots.to(device)
    qkv = torch.randn(num_tokens, num_kv_heads * 4, head_dim, device=device).to(dtype)
    k, v = qkv[:, :num_kv_heads], qkv[:, 2 * num_kv_heads:3 * num_kv_heads]  # strided views
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"),
                       dtype=dtype, device=device)
    expected = cache.clone()
    store_kv_cache(k, v, cache, slots)
    store_kv_cache_ref(k, v, expected, slots)
    return cache, expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (2, 128, 32), (3, 64, 16),
                                                              (8, 128, 64)])
def test_store_kv_cache_writes_each_token_to_its_slot(num_kv_heads, head_dim, block_size, dtype, device):
    cache, expected = _store_both(37, num_kv_heads, head_dim, block_size, dtype, device)
    torch.testing.assert_close(cache, expected, equal_nan=True, rtol=0, atol=0)


def test_store_kv_cache_skips_slot_minus_one(device):
    cache, expected = _store_both(20, 2, 64, 16, torch.float32, device, skip=(0, 7, 19))
    torch.testing.assert_close(cache, expected, equal_nan=True, rtol=0, atol=0)
    assert cache.isnan().sum() == expected.isnan().sum() > 0


def test_store_kv_cache_rejects_mismatched_heads(device):
    k = torch.randn(4, 2, 64, device=device)
    cache = torch.zeros(2, 4, 16, 4, 64, device=device)
    with pytest.raises(ValueError, match="kv_cache holds"):
        store_kv_cache(k, k, cache, torch.arange(4, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [16, 32, 128, 256])
def test_store_kv_cache_large(block_size, device):
    cache, expected = _store_both(5000, 8, 128, block_size, torch.bfloat16, device, skip=(3, 4999))
    torch.testing.assert_close(cache, expected, equal_nan=True, rtol=0, atol=0)
