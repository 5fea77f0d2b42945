"""Compiles every Triton kernel the engine launches for a Hopper GPU (sm_90), on a machine without
one: a launch the interpreter runs but the GPU compiler rejects (an atomic on a bf16 placeholder,
say) fails here instead of on the first GPU run.

    python -m tests.kernels.gpu_compile    # without TRITON_INTERPRET

The wrappers are called with small CPU tensors of each dtype the engine uses; `JITFunction.run` is
replaced by a recorder, so each launch's signature (argument dtypes, constexprs, warps, stages) is
captured instead of run, then compiled to a cubin with the ptxas that ships with triton.
"""
import concurrent.futures
import importlib
import os
import sys

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, native_specialize_impl

TARGET = GPUTarget("cuda", 90, 32)
OPTIONS = ("num_warps", "num_stages", "num_ctas")


def launch_spec(fn: JITFunction, args: tuple, kwargs: dict) -> tuple:
    """(kernel module, kernel name, signature, constexprs, divisible, options) of one launch:
    hashable, and picklable for the compiling processes. Arguments are typed and specialized by
    triton's own JIT rule (native_specialize_impl): integers equal to 1 become constants, and
    `divisible` holds the indices of 16-byte aligned pointers and integers divisible by 16.
    Without that the compiler vectorizes no load and pipelines no loop, so the code checked would
    not be the code the GPU runs."""
    options = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
    bound = fn.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    params = {p.name: p for p in fn.params}
    signature, constexprs, divisible = {}, {}, []
    for index, (name, value) in enumerate(bound.arguments.items()):
        param = params[name]
        if param.is_constexpr or value is None:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                           not param.do_not_specialize_on_alignment)
        if kind == "constexpr":
            signature[name], constexprs[name] = "constexpr", key
        else:
            signature[name] = kind
            if key == "D":
                divisible.append(index)
    return (fn.fn.__module__, fn.fn.__name__, tuple(signature.items()), tuple(constexprs.items()),
            tuple(divisible), tuple(sorted(options.items())))


def record_launches(calls) -> list[tuple]:
    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(launch_spec(self, args, dict(kwargs)))

    original, JITFunction.run = JITFunction.run, record
    try:
        for call in calls:
            call()
    finally:
        JITFunction.run = original
    return list(dict.fromkeys(launches))


def engine_calls():
    """Each kernel wrapper as the engine calls it, per dtype: Qwen3-like heads (GQA 4, head_dim
    128), a paged cache of 16-token blocks, decode split and unsplit, GEMV for one and several
    rows."""
    from corral.backends.base import AttentionMetadata
    from corral.kernels.activation import silu_and_mul
    from corral.kernels.decode_attention import DecodeWorkspace, paged_attention_decode
    from corral.kernels.gemv import SkinnyLinearWorkspace, skinny_linear
    from corral.kernels.kv_cache import store_kv_cache
    from corral.kernels.norm import fused_add_rms_norm, rms_norm
    from corral.kernels.paged_attention import paged_attention_prefill
    from corral.kernels.qk_norm_rotary import qk_norm_rotary
    from corral.kernels.rotary import apply_rotary, build_cos_sin_cache
    from corral.kernels.sampling import gumbel_argmax

    hq, hkv, d, hidden, tokens = 8, 2, 128, 256, 4
    i32 = dict(dtype=torch.int32)
    metadata = AttentionMetadata(torch.arange(tokens), torch.tensor([0, 1, 2, 3, 4], **i32),
                                 torch.tensor([20, 40, 3, 17], **i32), torch.arange(12, **i32).reshape(4, 3),
                                 max_query_len=1, max_seq_len=40)
    prefill = AttentionMetadata(torch.arange(tokens), torch.tensor([0, 3, 4], **i32), torch.tensor([3, 20], **i32),
                                torch.arange(6, **i32).reshape(2, 3), max_query_len=3, max_seq_len=20)
    positions = torch.arange(tokens)
    cos_sin = build_cos_sin_cache(d, 64, 10000.0)

    def calls_for(dtype: torch.dtype) -> list:
        def new(*shape):
            return torch.randn(*shape).to(dtype)
        x, residual, weight = new(tokens, hidden), new(tokens, hidden), new(hidden)
        q, k, v = new(tokens, hq, d), new(tokens, hkv, d), new(tokens, hkv, d)
        kv_cache = new(2, 16, 16, hkv, d)
        workspace = DecodeWorkspace()
        calls = [
            lambda: silu_and_mul(new(tokens, 2 * hidden)),
            lambda: rms_norm(x, weight, 1e-6),
            lambda: fused_add_rms_norm(x.clone(), residual.clone(), weight, 1e-6),
            lambda: apply_rotary(q.clone(), k.clone(), positions, cos_sin),
            lambda: qk_norm_rotary(q.clone(), k.clone(), positions, cos_sin, new(d), new(d), 1e-6),
            lambda: qk_norm_rotary(q.clone(), k.clone(), positions, cos_sin, new(d), new(d), 1e-6,
                                   v, kv_cache.clone(), metadata.slot_mapping),
            lambda: store_kv_cache(k, v, kv_cache.clone(), metadata.slot_mapping),
            lambda: paged_attention_prefill(q, kv_cache, prefill, d ** -0.5),
            lambda: paged_attention_decode(q, kv_cache, metadata, d ** -0.5, num_splits=1),
            lambda: paged_attention_decode(q, kv_cache, metadata, d ** -0.5, num_splits=4, workspace=workspace),
            lambda: gumbel_argmax(new(3, 1000), torch.tensor([0.0, 0.6, 1.0]), seed=1),
        ]
        if dtype != torch.float32:  # an fp8 KV cache (kv_cache_dtype="fp8"): every kernel that writes or reads it
            fp8_cache = kv_cache.to(torch.float8_e4m3fn)
            calls += [lambda: store_kv_cache(k, v, fp8_cache.clone(), metadata.slot_mapping),
                      lambda: qk_norm_rotary(q.clone(), k.clone(), positions, cos_sin, new(d), new(d), 1e-6,
                                             v, fp8_cache.clone(), metadata.slot_mapping),
                      lambda: paged_attention_prefill(q, fp8_cache, prefill, d ** -0.5),
                      lambda: paged_attention_decode(q, fp8_cache, metadata, d ** -0.5, num_splits=1),
                      lambda: paged_attention_decode(q, fp8_cache, metadata, d ** -0.5, num_splits=4,
                                                     workspace=workspace)]
        if dtype != torch.float32:  # the GEMV serves 16-bit models only
            gemv = SkinnyLinearWorkspace()
            calls += [lambda: skinny_linear(new(1, hidden), new(3 * hidden, hidden), workspace=gemv),
                      lambda: skinny_linear(new(4, hidden), new(hidden, hidden), new(hidden), workspace=gemv),
                      lambda: skinny_linear(new(4, hidden), new(hidden, hidden), workspace=gemv, split_k=2)]
        return calls

    return [call for dtype in (torch.bfloat16, torch.float16, torch.float32) for call in calls_for(dtype)]


def compile_one(launch: tuple) -> str | None:
    module, name, signature, constexprs, divisible, options = launch
    fn = getattr(importlib.import_module(module), name)
    attrs = {(index,): [["tt.divisibility", 16]] for index in divisible}
    try:
        triton.compile(ASTSource(fn, dict(signature), dict(constexprs), attrs=attrs), target=TARGET,
                       options=dict(options))
    except Exception as error:  # noqa: BLE001 - every failure is reported, not raised
        types = ", ".join(f"{k}: {v}" for k, v in signature if v != "constexpr")
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return f"{name}({types}) {dict(constexprs)}: {last}"
    return None


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("tests.kernels.gpu_compile compiles for the GPU: run it without TRITON_INTERPRET")
    launches = record_launches(engine_calls())
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        failures = [f for f in pool.map(compile_one, launches) if f]
    print(f"{len(launches) - len(failures)} of {len(launches)} kernel launches compile for sm_90")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
