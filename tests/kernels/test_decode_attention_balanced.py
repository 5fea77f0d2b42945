"""Batch-balanced paged decode attention against the torch reference."""
import pytest
import torch

from corral.kernels.decode_attention import DecodeWorkspace
from corral.kernels.decode_attention_balanced import paged_attention_decode_balanced, plan_decode
from corral.kernels.paged_attention import paged_attention_ref

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
SEQ_LENS = [1, 15, 16, 17, 64, 65, 200]


def _run(make_decode_batch, seq_lens, *, group=2, head_dim=64, dtype=torch.float32, num_programs=None,
         block_n=None, block_size=16):
    q, cache, metadata = make_decode_batch(seq_lens, group, head_dim, dtype, block_size)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_attention_decode_balanced(q, cache, metadata, scale, out=out, num_programs=num_programs,
                                    block_n=block_n)
    torch.testing.assert_close(out, paged_attention_ref(q, cache, metadata, scale),
                               rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_decode_matches_reference(group, head_dim, dtype, make_decode_batch):
    _run(make_decode_batch, SEQ_LENS, group=group, head_dim=head_dim, dtype=dtype, num_programs=3)


# with tiles of 16 keys, SEQ_LENS has 1+1+1+2+4+5+13 = 27 tiles: one program holds every
# sequence whole; 27 hold one tile each, cutting every sequence of several tiles; 9 (3 tiles each)
# start programs on sequence boundaries (tile 3, 9) and inside sequences; 100 leave most idle
@pytest.mark.parametrize("num_programs", [1, 2, 5, 9, 27, 100])
def test_any_program_count_gives_the_same_answer(num_programs, make_decode_batch):
    _run(make_decode_batch, SEQ_LENS, num_programs=num_programs, block_n=16)


def test_plan_lays_the_tiles_end_to_end(make_decode_batch):
    _, _, metadata = make_decode_batch([1, 33, 16, 70], 2, 64, torch.float32)
    plan = plan_decode(metadata, block_n=16, block_size=16)
    assert plan.tile_bounds.tolist() == [0, 1, 4, 5, 10]
    assert plan.tile_seq[:10].tolist() == [0, 1, 1, 1, 2, 3, 3, 3, 3, 3]
    assert plan.tile_pos[:10].tolist() == [0, 0, 1, 2, 0, 0, 1, 2, 3, 4]


def test_one_plan_serves_every_layer_and_the_workspace_is_left_ready(make_decode_batch):
    q, cache, metadata = make_decode_batch([300, 7, 200], 2, 64, torch.float32)
    plan, workspace = plan_decode(metadata, 64, 16), DecodeWorkspace()
    expected = paged_attention_ref(q, cache, metadata, 0.125)
    for _ in range(2):
        out = paged_attention_decode_balanced(q, cache, metadata, 0.125, plan=plan, workspace=workspace,
                                              num_programs=4)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        assert not workspace.counters.any()


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_block_sizes(block_size, make_decode_batch):
    _run(make_decode_batch, [5, 130, 33], num_programs=3, block_size=block_size)


@pytest.mark.parametrize("group", [3, 6])
def test_group_sizes_that_are_not_powers_of_two(group, make_decode_batch):
    _run(make_decode_batch, [9, 70], group=group, num_programs=3, block_n=16)


@pytest.mark.parametrize("head_dim", [32, 256])
def test_other_power_of_two_head_dims(head_dim, make_decode_batch):
    _run(make_decode_batch, [9, 70], head_dim=head_dim, num_programs=3)


@pytest.mark.parametrize("num_programs", [1, 4])
def test_padding_sequences_without_a_query_row_write_nothing(num_programs, make_decode_batch):
    """CUDA-graph padding repeats the last query_start_loc (query_len 0): such rows have no tiles."""
    q, cache, metadata = make_decode_batch([30, 1, 70], 2, 64, torch.float32)
    metadata.query_start_loc = torch.tensor([0, 1, 2, 3, 3, 3], dtype=torch.int32, device=q.device)
    metadata.seq_lens = torch.cat([metadata.seq_lens, metadata.seq_lens.new_tensor([5, 9])])
    metadata.block_tables = torch.cat([metadata.block_tables, metadata.block_tables[:2]])
    out = torch.full_like(q, float("nan"))
    paged_attention_decode_balanced(q, cache, metadata, 0.125, out=out, num_programs=num_programs, block_n=16)
    torch.testing.assert_close(out, paged_attention_ref(q, cache, metadata, 0.125), rtol=1e-4, atol=1e-4)


def test_a_plan_for_other_tiles_is_rejected(make_decode_batch):
    q, cache, metadata = make_decode_batch([4], 1, 64, torch.float32)
    with pytest.raises(ValueError, match="tiles of 16 keys, not 64"):
        paged_attention_decode_balanced(q, cache, metadata, 1.0, plan=plan_decode(metadata, 16, 16), block_n=64)


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
    """The plan is captured with the kernel: replays follow new lengths and block tables."""
    q, cache, metadata = make_decode_batch([4000, 3000, 2000, 1000], 4, 128, torch.bfloat16)
    scale = 128 ** -0.5
    out, workspace = torch.empty_like(q), DecodeWorkspace()
    paged_attention_decode_balanced(q, cache, metadata, scale, out=out, workspace=workspace)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan = plan_decode(metadata, 64, 16)
        paged_attention_decode_balanced(q, cache, metadata, scale, out=out, plan=plan, workspace=workspace)
    for seq_lens in ([1, 17, 4000, 3999], [2500, 1, 64, 65]):
        metadata.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        metadata.block_tables.copy_(metadata.block_tables.flip(0))
        q.normal_()
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out, paged_attention_ref(q, cache, metadata, scale), rtol=2e-2, atol=2e-2)
