"""TritonAttentionBackend: store the new K/V, then attend, as the torch reference does."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corral.backends import triton_paged
from corral.backends.base import get_backend
from corral.kernels.kv_cache import store_kv_cache_ref
from corral.kernels.paged_attention import paged_attention_ref


@pytest.mark.parametrize("query_lens,seq_lens,num_decodes", [
    ([1, 1, 1], [1, 30, 77], 0),            # decode only
    ([12, 1, 40], [12, 50, 70], 0),         # prefill, decode and a chunk after a cached prefix, in one kernel
    ([1, 1, 12, 40], [77, 30, 12, 70], 2),  # as the engine lays a mixed batch out: the decodes first, apart
    ([1] * 256 + [12], [3] * 256 + [20], 256),  # so many decodes the decode kernel would not split: one kernel
])
def test_forward_stores_then_attends(query_lens, seq_lens, num_decodes, make_batch, monkeypatch):
    num_kv_heads, group, head_dim = 2, 4, 64
    cache, metadata = make_batch(query_lens, seq_lens, block_size=16, num_kv_heads=num_kv_heads,
                                 head_dim=head_dim, dtype=torch.bfloat16)
    metadata.num_decodes = num_decodes
    tokens = sum(query_lens)
    qkv = torch.randn(tokens, (group + 2) * num_kv_heads, head_dim).to(cache.device, cache.dtype)
    q, k, v = qkv.split([group * num_kv_heads, num_kv_heads, num_kv_heads], dim=1)
    expected_cache = cache.clone()
    store_kv_cache_ref(k, v, expected_cache, metadata.slot_mapping)
    expected = paged_attention_ref(q, expected_cache, metadata, 0.125)

    backend = get_backend("triton", cache.device)
    decode_launches = []
    decode = triton_paged.paged_attention_decode
    monkeypatch.setattr(triton_paged, "paged_attention_decode",
                        lambda *a, **k: decode_launches.append(1) or decode(*a, **k))
    out = backend.forward(q, k, v, cache, metadata, 0.125)

    assert backend.name == "triton"
    decode_only = max(query_lens) == 1
    assert len(decode_launches) == (decode_only or 0 < num_decodes < 256)  # 256 x 2 KV heads: unsplit
    torch.testing.assert_close(cache, expected_cache, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


# Each launch's specialization key as triton's JIT computes it (tests/kernels/gpu_compile.py), for mixed batches of
# 5 to 8 decodes (one split rule for all): the prompts' metadata is a slice starting at the first prompt, at a
# different address each time.
MIXED_BATCH_KEYS = """
import torch
from corral.backends.base import get_backend
from corral.kernels.attention_metadata import AttentionMetadata
from tests.kernels.gpu_compile import record_launches

def step(num_decodes):
    query_lens = [1] * num_decodes + [8, 8]
    starts = torch.tensor([0] + query_lens).cumsum(0).int()
    tokens, num_seqs = int(starts[-1]), len(query_lens)
    metadata = AttentionMetadata(torch.arange(tokens), starts, torch.tensor([40] * num_decodes + [8, 8]).int(),
                                 torch.arange(num_seqs * 5).int().view(num_seqs, 5), max_query_len=8,
                                 max_seq_len=40, num_decodes=num_decodes)
    q, k, v = (torch.randn(tokens, h, 64).bfloat16() for h in (8, 2, 2))
    cache = torch.zeros(2, num_seqs * 5, 16, 2, 64).bfloat16()
    return lambda: get_backend("triton", torch.device("cpu")).forward(q, k, v, cache, metadata, 0.125)

launches = record_launches([step(n) for n in range(5, 9)])
print(sorted(name for _, name, *_ in launches))
"""


def test_a_mixed_batch_compiles_each_kernel_once_whatever_its_number_of_decodes():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", MIXED_BATCH_KEYS], cwd=Path(__file__).resolve().parents[2],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "['_decode_kernel', '_store_kv_cache_kernel', '_varlen_kernel']"


def test_an_unknown_backend_lists_the_choices(device):
    with pytest.raises(ValueError, match="choose 'torch' or 'triton'"):
        get_backend("flash", device)

