import os

import pytest
import torch


def _patch_interpreter_bf16_dot():
    """Triton 3.9's interpreter keeps bf16 as raw uint16 and feeds those bits straight to
    np.matmul, so a bf16 tl.dot returns garbage on CPU. Widen bf16 operands to fp32 first (the
    GPU also multiplies bf16 exactly and accumulates in fp32)."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot
    if getattr(original, "_corral_patched", False):
        return

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot._corral_patched = True
    builder.create_dot = create_dot


def _patch_interpreter_fp8_cast():
    """Triton 3.9's interpreter rounds a float to float8 e4m3 by adding the carry into the mantissa bits
    and OR-ing them with the exponent, so a value that rounds up to the next power of two comes out at half
    of it when that exponent is odd (31.9 -> 16). Round as the GPU's cvt.rn does, through torch (the
    KV store saturates before it casts, so torch's unsaturated cast agrees)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_fp_to_fp
    if getattr(original, "_corral_patched", False):
        return

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar == tl.float8e4nv and src.dtype.scalar in (tl.float32, tl.float16, tl.bfloat16):
            wide = self.cast_impl(src, tl.float32) if src.dtype.scalar == tl.bfloat16 else src
            data = torch.from_numpy(np.ascontiguousarray(wide.data, dtype=np.float32)).to(torch.float8_e4m3fn)
            return interpreter.TensorHandle(data.view(torch.uint8).numpy(), dst_type.scalar)
        return original(self, src, dst_type, rounding_mode)

    create_fp_to_fp._corral_patched = True
    builder.create_fp_to_fp = create_fp_to_fp


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_bf16_dot()
    _patch_interpreter_fp8_cast()


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def build_batch(query_lens, seq_lens, *, block_size, num_kv_heads, head_dim, dtype, device,
                extra_blocks=3, seed=0):
    """A flat batch over a randomly filled paged cache whose blocks are handed out shuffled.
    Sequence i has seq_lens[i] tokens, its last query_lens[i] being the new ones."""
    from corral.backends.base import AttentionMetadata

    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    used = 0
    slots = []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        tables[i, :blocks_per_seq[i]] = order[used:used + blocks_per_seq[i]]
        used += blocks_per_seq[i]
        for p in range(s_len - q_len, s_len):
            slots.append(int(tables[i, p // block_size]) * block_size + p % block_size)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    starts = torch.tensor([0] + list(query_lens)).cumsum(0).to(torch.int32)
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=starts.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
    return cache.to(device=device, dtype=dtype), metadata


@pytest.fixture
def make_batch(device):
    def make(query_lens, seq_lens, **kwargs):
        return build_batch(query_lens, seq_lens, device=device, **kwargs)
    return make


@pytest.fixture
def make_decode_batch(make_batch):
    """(q, cache, metadata): one query token per sequence over contexts of seq_lens, in
    num_kv_heads KV heads of `group` query heads each."""
    def make(seq_lens, group, head_dim, dtype, block_size=16, seed=0, num_kv_heads=2):
        cache, metadata = make_batch([1] * len(seq_lens), seq_lens, block_size=block_size,
                                     num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, seed=seed)
        q = torch.randn(len(seq_lens), num_kv_heads * group, head_dim,
                        generator=torch.Generator().manual_seed(seed + 1)).to(cache.device, dtype)
        return q, cache, metadata
    return make
