"""TritonAttentionBackend: store the new K/V, then attend, as the torch reference does."""
import pytest
import torch

from corral.backends.base import get_backend
from corral.kernels.kv_cache import store_kv_cache_ref
from corral.kernels.paged_attention import paged_attention_ref


@pytest.mark.parametrize("name", ["triton", "triton-balanced"])
@pytest.mark.parametrize("query_lens,seq_lens", [
    ([1, 1, 1], [1, 30, 77]),           # decode only
    ([12, 1, 40], [12, 50, 70]),        # prefill, decode and a chunk after a cached prefix
])
def test_forward_stores_then_attends(query_lens, seq_lens, name, make_batch):
    num_kv_heads, group, head_dim = 2, 4, 64
    cache, metadata = make_batch(query_lens, seq_lens, block_size=16, num_kv_heads=num_kv_heads,
                                 head_dim=head_dim, dtype=torch.bfloat16)
    tokens = sum(query_lens)
    qkv = torch.randn(tokens, (group + 2) * num_kv_heads, head_dim).to(cache.device, cache.dtype)
    q, k, v = qkv.split([group * num_kv_heads, num_kv_heads, num_kv_heads], dim=1)
    expected_cache = cache.clone()
    store_kv_cache_ref(k, v, expected_cache, metadata.slot_mapping)
    expected = paged_attention_ref(q, expected_cache, metadata, 0.125)

    backend = get_backend(name, cache.device)
    out = backend.forward(q, k, v, cache, metadata, 0.125)

    assert backend.name == "triton"
    torch.testing.assert_close(cache, expected_cache, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_the_balanced_backend_plans_once_per_step(make_batch):
    """Every layer of a step gets the step's metadata object: the plan is made by the first."""
    cache, metadata = make_batch([1, 1], [30, 77], block_size=16, num_kv_heads=2, head_dim=64, dtype=torch.float32)
    backend = get_backend("triton-balanced", cache.device)
    q = torch.randn(2, 4, 64, device=cache.device)
    kv = torch.randn(2, 2, 64, device=cache.device)
    backend.forward(q, kv, kv, cache, metadata, 0.125)
    plan = backend._plan[2]
    backend.forward(q, kv, kv, cache, metadata, 0.125)
    assert backend._plan[2] is plan
    next_step = type(metadata)(metadata.slot_mapping, metadata.query_start_loc, metadata.seq_lens + 1,
                               metadata.block_tables, 1, 78)
    out = backend.forward(q, kv, kv, cache, next_step, 0.125)
    assert backend._plan[2] is not plan
    torch.testing.assert_close(out, paged_attention_ref(q, cache, next_step, 0.125), rtol=1e-4, atol=1e-4)


def test_an_unknown_backend_lists_the_choices(device):
    with pytest.raises(ValueError, match="choose 'torch', 'triton' or 'triton-balanced'"):
        get_backend("flash", device)


@pytest.mark.gpu
def test_the_balanced_backend_plans_again_inside_a_graph_capture(make_batch):
    """The engine warms up and then captures on one metadata object: the graph must carry its own
    plan, or its replays would read the warm-up's tile layout."""
    cache, metadata = make_batch([1, 1], [30, 77], block_size=16, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16)
    backend = get_backend("triton-balanced", cache.device)
    q = torch.randn(2, 4, 64, device=cache.device, dtype=cache.dtype)
    kv = torch.randn(2, 2, 64, device=cache.device, dtype=cache.dtype)
    metadata.slot_mapping.fill_(-1)  # keep the cache as it is
    backend.forward(q, kv, kv, cache, metadata, 0.125)  # the warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(q, kv, kv, cache, metadata, 0.125)
    metadata.seq_lens.copy_(torch.tensor([70, 5], dtype=torch.int32))
    graph.replay()
    torch.testing.assert_close(out, paged_attention_ref(q, cache, metadata, 0.125), rtol=2e-2, atol=2e-2)
