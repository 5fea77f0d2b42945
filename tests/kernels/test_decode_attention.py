"""Split-KV paged decode attention against the torch reference."""
import pytest
import torch

from corral.kernels.decode_attention import MAX_SPLITS, DecodeWorkspace, default_split, paged_attention_decode
from corral.kernels.paged_attention import paged_attention_ref

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
# around block (16) and tile (64) edges, a single token, and a context of several splits
SEQ_LENS = [1, 15, 16, 17, 64, 65, 200]


def _run(make_decode_batch, seq_lens, *, group, head_dim, dtype, num_splits=None, block_size=16, split_len=1):
    """split_len 1 (slices of one tile) splits these short test contexts as far as num_splits allows."""
    q, cache, metadata = make_decode_batch(seq_lens, group, head_dim, dtype, block_size)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_attention_decode(q, cache, metadata, scale, out=out, num_splits=num_splits,
                           split_len=split_len)
    expected = paged_attention_ref(q, cache, metadata, scale)
    torch.testing.assert_close(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_decode_matches_reference(group, head_dim, dtype, make_decode_batch):
    _run(make_decode_batch, SEQ_LENS, group=group, head_dim=head_dim, dtype=dtype, num_splits=4)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 16])
def test_split_counts_give_the_same_answer(num_splits, make_decode_batch):
    # 16 splits of a short context leave most of them empty
    _run(make_decode_batch, SEQ_LENS, group=4, head_dim=64, dtype=torch.float32, num_splits=num_splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unsplit(dtype, make_decode_batch):
    _run(make_decode_batch, SEQ_LENS, group=2, head_dim=64, dtype=dtype, num_splits=1)


@pytest.mark.parametrize("split_len", [1, 100, 129, 10_000])
def test_slice_lengths(split_len, make_decode_batch):
    _run(make_decode_batch, [300, 7, 129, 64], group=2, head_dim=64, dtype=torch.float32, num_splits=8,
         split_len=split_len)


def test_default_split_count(make_decode_batch):
    _run(make_decode_batch, [300, 7], group=2, head_dim=64, dtype=torch.bfloat16, split_len=128)


@pytest.mark.parametrize("num_seqs, expected", [(1, (16, 64)), (2, (8, 64)), (8, (8, 64)), (9, (16, 256)),
                                                (16, (16, 256)), (32, (8, 256)), (48, (4, 256)), (63, (4, 256)),
                                                (64, (1, 256)), (128, (1, 256)), (512, (1, 256))])
def test_default_splits_launch_at_most_2048_programs_and_none_from_512_pairs(num_seqs, expected):
    assert default_split(num_seqs, num_kv_heads=8) == expected


def test_a_workspace_is_left_ready_for_the_next_call(make_decode_batch):
    q, cache, metadata = make_decode_batch([300, 7, 200], 2, 64, torch.float32)
    workspace, expected = DecodeWorkspace(), paged_attention_ref(q, cache, metadata, 0.125)
    for _ in range(2):
        out = paged_attention_decode(q, cache, metadata, 0.125, num_splits=4, workspace=workspace,
                                     split_len=1)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        assert not workspace.counters.any()


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_block_sizes(block_size, make_decode_batch):
    _run(make_decode_batch, [5, 130, 33], group=2, head_dim=64, dtype=torch.float32, num_splits=2,
         block_size=block_size)


@pytest.mark.parametrize("group", [3, 6])
def test_group_sizes_that_are_not_powers_of_two(group, make_decode_batch):
    _run(make_decode_batch, [9, 70], group=group, head_dim=64, dtype=torch.float32, num_splits=2)


@pytest.mark.parametrize("head_dim", [32, 256])
def test_other_power_of_two_head_dims(head_dim, make_decode_batch):
    _run(make_decode_batch, [9, 70], group=2, head_dim=head_dim, dtype=torch.float32, num_splits=2)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_padding_sequences_without_a_query_row_write_nothing(num_splits, make_decode_batch):
    """CUDA-graph padding may repeat the last query_start_loc (query_len 0) or use seq_len 0."""
    q, cache, metadata = make_decode_batch([30, 1, 70], 2, 64, torch.float32)
    metadata.query_start_loc = torch.tensor([0, 1, 2, 3, 3, 3], dtype=torch.int32, device=q.device)
    metadata.seq_lens = torch.cat([metadata.seq_lens, metadata.seq_lens.new_tensor([5, 9])])
    metadata.block_tables = torch.cat([metadata.block_tables, metadata.block_tables[:2]])
    out = torch.full_like(q, float("nan"))
    paged_attention_decode(q, cache, metadata, 0.125, out=out, num_splits=num_splits, split_len=1)
    expected = paged_attention_ref(q, cache, metadata, 0.125)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_empty_context_gives_zeros(make_decode_batch):
    q, cache, metadata = make_decode_batch([30, 1], 2, 64, torch.float32)
    metadata.seq_lens[1] = 0
    out = paged_attention_decode(q, cache, metadata, 0.125, num_splits=4, split_len=1)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[0], paged_attention_ref(q, cache, metadata, 0.125)[0])


@pytest.mark.parametrize("num_splits", [0, MAX_SPLITS + 1])
def test_rejects_split_counts_out_of_range(num_splits, make_decode_batch):
    q, cache, metadata = make_decode_batch([4], 1, 64, torch.float32)
    with pytest.raises(ValueError, match="num_splits must be between 1 and"):
        paged_attention_decode(q, cache, metadata, 1.0, num_splits=num_splits)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("group,head_dim", [(1, 128), (2, 64), (4, 128), (8, 128), (4, 256)])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_large_batches(batch, group, head_dim, block_size, dtype, make_decode_batch):
    gen = torch.Generator().manual_seed(batch + group)
    seq_lens = torch.randint(1, 5000, (batch,), generator=gen).tolist()
    _run(make_decode_batch, seq_lens, group=group, head_dim=head_dim, dtype=dtype, block_size=block_size)


@pytest.mark.gpu
def test_cuda_graph_replays_with_new_seq_lens(make_decode_batch):
    """Captured once, replayed after seq_lens and block tables change: lengths live on the device."""
    q, cache, metadata = make_decode_batch([4000, 3000, 2000, 1000], 4, 128, torch.bfloat16)
    scale = 128 ** -0.5
    out, workspace = torch.empty_like(q), DecodeWorkspace()
    paged_attention_decode(q, cache, metadata, scale, out=out, workspace=workspace)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_attention_decode(q, cache, metadata, scale, out=out, workspace=workspace)
    for seq_lens in ([1, 17, 4000, 3999], [2500, 1, 64, 65]):
        metadata.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        metadata.block_tables.copy_(metadata.block_tables.flip(0))
        q.normal_()
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out, paged_attention_ref(q, cache, metadata, scale),
                                   rtol=2e-2, atol=2e-2)
