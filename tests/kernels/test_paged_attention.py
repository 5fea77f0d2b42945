"""Varlen paged attention (prefill, chunked prefill, mixed batches) against the torch reference."""
import pytest
import torch
import torch.nn.functional as F

from corral.kernels.decode_attention import paged_attention_decode
from corral.kernels.paged_attention import paged_attention_prefill, paged_attention_ref

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
NUM_KV_HEADS = 2


def _run(make_batch, query_lens, seq_lens, *, group, head_dim, dtype, block_size=16, seed=0, **tiles):
    cache, metadata = make_batch(query_lens, seq_lens, block_size=block_size,
                                 num_kv_heads=NUM_KV_HEADS, head_dim=head_dim, dtype=dtype,
                                 seed=seed)
    q = torch.randn(sum(query_lens), NUM_KV_HEADS * group, head_dim,
                    generator=torch.Generator().manual_seed(seed + 1)).to(cache.device, dtype)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_attention_prefill(q, cache, metadata, scale, out=out, **tiles)
    expected = paged_attention_ref(q, cache, metadata, scale)
    torch.testing.assert_close(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


# query_len < seq_len: earlier tokens come from the prefix cache or an earlier chunk
MIXED = ([1, 7, 33, 20, 16], [1, 40, 33, 85, 16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_mixed_batch_matches_reference(group, head_dim, dtype, make_batch):
    _run(make_batch, *MIXED, group=group, head_dim=head_dim, dtype=dtype)


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_block_sizes(block_size, make_batch):
    _run(make_batch, [3, 50, 17], [131, 50, 64], group=2, head_dim=64, dtype=torch.float32,
         block_size=block_size)


@pytest.mark.parametrize("seq_len", [15, 16, 17, 63, 64, 65])
def test_lengths_around_block_and_tile_edges(seq_len, make_batch):
    _run(make_batch, [seq_len], [seq_len], group=4, head_dim=64, dtype=torch.float32)


@pytest.mark.parametrize("query_len,seq_len", [(150, 150), (130, 200), (1, 200)])
def test_long_queries_span_several_query_blocks(query_len, seq_len, make_batch):
    _run(make_batch, [query_len], [seq_len], group=1, head_dim=64, dtype=torch.bfloat16)


@pytest.mark.parametrize("block_m, block_n, num_warps, num_stages",
                         [(16, 16, 4, 1), (32, 32, 4, 2), (128, 128, 8, 3), (256, 64, 8, 3)])
def test_forced_tiles_match_reference(block_m, block_n, num_warps, num_stages, make_batch):
    _run(make_batch, [70, 7, 33, 1], [70, 40, 100, 9], group=4, head_dim=64, dtype=torch.bfloat16,
         block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)


@pytest.mark.parametrize("group", [3, 5, 6])
def test_group_sizes_that_are_not_powers_of_two(group, make_batch):
    _run(make_batch, *MIXED, group=group, head_dim=64, dtype=torch.float32)


@pytest.mark.parametrize("head_dim", [16, 32, 256])
def test_other_power_of_two_head_dims(head_dim, make_batch):
    _run(make_batch, [5, 20], [37, 20], group=2, head_dim=head_dim, dtype=torch.float32)


def test_float16(make_batch):
    _run(make_batch, *MIXED, group=4, head_dim=128, dtype=torch.float16)


def test_reference_agrees_with_dense_causal_sdpa(make_batch):
    cache, metadata = make_batch([21], [21], block_size=16, num_kv_heads=2, head_dim=32,
                                 dtype=torch.float32)
    q = torch.randn(21, 4, 32, device=cache.device)
    blocks = metadata.block_tables[0, :2].long()
    k = cache[0, blocks].reshape(-1, 2, 32)[:21].repeat_interleave(2, dim=1)
    v = cache[1, blocks].reshape(-1, 2, 32)[:21].repeat_interleave(2, dim=1)
    dense = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True, scale=0.3).transpose(0, 1)
    torch.testing.assert_close(paged_attention_ref(q, cache, metadata, 0.3), dense,
                               rtol=1e-5, atol=1e-5)


def test_rejects_head_counts_that_do_not_divide(make_batch):
    cache, metadata = make_batch([4], [4], block_size=16, num_kv_heads=2, head_dim=64,
                                 dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        paged_attention_prefill(torch.randn(4, 3, 64, device=cache.device), cache, metadata, 1.0)


@pytest.mark.parametrize("decode", [False, True])
def test_an_out_the_kernels_cannot_write_is_rejected(decode, make_batch):
    """A transposed view has q's shape but not a contiguous head dim: the stores would scatter."""
    cache, metadata = make_batch([1, 1], [9, 30], block_size=16, num_kv_heads=2, head_dim=64, dtype=torch.float32)
    q = torch.randn(2, 4, 64, device=cache.device)
    attend = paged_attention_decode if decode else paged_attention_prefill
    transposed, short = torch.empty(2, 64, 4).transpose(1, 2), torch.empty(2, 4, 32)
    for out in (transposed.to(cache.device), short.to(cache.device)):
        with pytest.raises(ValueError, match="out must be"):
            attend(q, cache, metadata, 1.0, out=out)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block_size", [16, 32, 256])
@pytest.mark.parametrize("group,head_dim", [(1, 128), (4, 128), (8, 128), (2, 64), (4, 256)])
def test_large_batches(group, head_dim, block_size, dtype, make_batch):
    gen = torch.Generator().manual_seed(group * 1000 + block_size)
    seq_lens = torch.randint(1, 3000, (12,), generator=gen).tolist()
    query_lens = [max(1, s - int(torch.randint(0, s, (1,), generator=gen))) for s in seq_lens]
    query_lens[:3] = [1, 1, seq_lens[2]]
    _run(make_batch, query_lens, seq_lens, group=group, head_dim=head_dim, dtype=dtype,
         block_size=block_size)
