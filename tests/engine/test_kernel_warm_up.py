"""Kernel warm-up at engine start: after the profiling step, the CUDA graphs' decode steps and warm_up_batches,
the attention and sampling kernels a serving trace launches need no variant Triton has not compiled yet.
Checked without a GPU through triton's own specialization key of each launch (tests/kernels/gpu_compile.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Qwen3-4B's and Llama-2-7B's heads. Each launch goes through TritonAttentionBackend.forward with q, k and v
# as views of one qkv tensor, as the attention layer hands them over; the recorder runs no kernel.
KEYS = """
import random, sys, types
import torch
from corral.backends.base import get_backend
from corral.engine.cuda_graphs import batch_size_buckets
from corral.engine.profiling import profiling_batch, step_batch, warm_up_batches
from corral.kernels.sampling import gumbel_argmax
from tests.kernels.gpu_compile import record_launches

num_q_heads, num_kv_heads, max_num_seqs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
warm_up, eager = sys.argv[4] == "1", sys.argv[5] == "1"
config = types.SimpleNamespace(max_num_batched_tokens=8192, max_model_len=4096, block_size=16,
                               max_num_seqs=max_num_seqs, enforce_eager=eager)
cpu, backend = torch.device("cpu"), get_backend("triton", torch.device("cpu"))

cache = torch.zeros(2, 4, 16, num_kv_heads, 128).bfloat16()  # its strides do not depend on its number of blocks

def step(metadata, num_sampled):
    def launch():
        tokens = int(metadata.query_start_loc[-1])
        q, k, v = torch.zeros(tokens, num_q_heads + 2 * num_kv_heads, 128).bfloat16().split(
            [num_q_heads, num_kv_heads, num_kv_heads], dim=1)
        backend.forward(q, k, v, cache, metadata, 0.088)
        if num_sampled:
            gumbel_argmax(torch.zeros(num_sampled, 1000), torch.ones(num_sampled), seed=random.getrandbits(31))
    return launch

def batch(query_lens, seq_lens, num_decodes=0, sampled=True):
    _, metadata, _ = step_batch(query_lens, seq_lens, 16, cpu, num_decodes)
    return step(metadata, len(query_lens) if sampled else 0)

_, _, profile, _ = profiling_batch(config, 1000, cpu)
start = [step(profile, min(config.max_num_seqs, 8192))]
if not eager:  # the CUDA graphs: their capture samples nothing
    start += [batch([1] * n, [40] * n, sampled=False) for n in batch_size_buckets(config.max_num_seqs)]
if warm_up:
    start += [batch(*b) for b in warm_up_batches(config, num_kv_heads)]

rng, trace = random.Random(0), []
for _ in range(300):  # mixed steps as a busy server makes them: decodes first, then prompt chunks
    num_decodes = min(rng.choice([0, 1, 2, 3, 5, 8, 13, 40, 64, 100, 255]), config.max_num_seqs - 3)
    chunks = [rng.choice([1, 2, 3, 5, 7, 9, 17, 33, 100, 1000]) for _ in range(rng.randint(1, 3))]
    query_lens = [1] * num_decodes + chunks
    seq_lens = [rng.randint(2, 3000) for _ in range(num_decodes)] + [q + rng.choice([0, 0, 16, 500]) for q in chunks]
    trace.append(batch(query_lens, seq_lens, num_decodes))
    if eager:  # decode steps run eagerly too, at any batch size
        num_seqs = rng.randint(1, config.max_num_seqs)
        trace.append(batch([1] * num_seqs, [rng.randint(2, 3000) for _ in range(num_seqs)]))

compiled = set(record_launches(start))
new = [launch for launch in record_launches(trace) if launch not in compiled]
print(sorted({name for _, name, *_ in new}))
"""


def new_variants(num_q_heads: int, num_kv_heads: int, warm_up: bool, enforce_eager: bool = False,
                 max_num_seqs: int = 256) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [num_q_heads, num_kv_heads, max_num_seqs, int(warm_up), int(enforce_eager)]
    result = subprocess.run([sys.executable, "-c", KEYS, *map(str, args)],
                            cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(32, 8), (32, 32)])
def test_a_serving_trace_launches_no_kernel_variant_the_start_has_not_compiled(num_q_heads, num_kv_heads):
    assert new_variants(num_q_heads, num_kv_heads, warm_up=True) == "[]"


def test_without_the_warm_up_the_trace_would_compile_prompt_attention_while_serving():
    assert new_variants(32, 8, warm_up=False) == "['_varlen_kernel']"


# without CUDA graphs every decode step launches the decode kernel; 6 KV heads a rank and 100 sequences at most:
# no power of two of sequences up to 100 reaches the unsplit rule's 512 (sequence, KV head) pairs
@pytest.mark.parametrize("num_q_heads,num_kv_heads,max_num_seqs", [(32, 32, 256), (24, 6, 100)])
def test_without_cuda_graphs_a_serving_trace_launches_no_kernel_variant_the_start_has_not_compiled(
        num_q_heads, num_kv_heads, max_num_seqs):
    assert new_variants(num_q_heads, num_kv_heads, warm_up=True, enforce_eager=True, max_num_seqs=max_num_seqs) == "[]"
