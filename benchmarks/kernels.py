"""B5: the Triton kernels at serving shapes of the benchmark models (bf16), against the copy bandwidth
and bf16 matmul rate measured in the same run.

    python -m benchmarks.kernels [--models qwen3-4b,llama-2-7b] [--kernels decode,prefill,...]
    python -m benchmarks.kernels --decode-sweep --models qwen3-0.6b   # split counts and slice lengths by batch size
    python -m benchmarks.kernels --prefill-sweep                      # prefill attention tiles, warps, stages

Each kernel's output is checked against its torch reference once per shape before it is timed.
Timing, medians throughout: decode attention and the one-token cases run inside one CUDA graph (no
launch overhead) over input copies, four times L2 in all where 64 copies reach it (one-token inputs
stay in L2, as in a decode step, where the kernel before has just written them); the rest run one
launch per CUDA-event pair with triton's do_bench, which flushes L2 before each. Bytes are what a
kernel must move at least (inputs read once, outputs written once).
"""
import argparse
import functools
import math
import sys

import torch

from benchmarks.common import emit, environment
from benchmarks.configs import CONFIGS

DTYPE = torch.bfloat16
DEVICE = "cuda"
BLOCK_SIZE = 16
DECODE = [(b, s) for b in (1, 64, 256) for s in (1024, 4096)]
PREFILL = [[4096], [1024] * 8]
TOKENS = (1, 8192)
SWEEP_BATCHES = (1, 4, 16, 32, 64, 128, 256)
SWEEP_SPLIT_LENS = (64, 128, 256)
# (block_m, block_n, num_warps, num_stages) for prefill attention
PREFILL_SWEEP = [(bm, bn, w, st) for bm in (64, 128) for bn in (32, 64, 128) for w in (4, 8) for st in (2, 3)] \
    + [(256, 64, 8, 3)]
KERNELS = ("decode", "prefill", "fused_add_rms_norm", "rotary", "qk_norm_rotary", "silu_and_mul", "store_kv_cache")


def model_shapes(name: str) -> dict:
    c = CONFIGS[name]
    hq = c["num_attention_heads"]
    return {"hq": hq, "hkv": c["num_key_value_heads"], "d": c.get("head_dim", c["hidden_size"] // hq),
            "hidden": c["hidden_size"], "inter": c["intermediate_size"], "eps": c["rms_norm_eps"],
            "theta": c["rope_theta"], "qwen3": c["model_type"] == "qwen3"}


def check(label: str, actual, expected, tol: float):
    for a, e in zip(actual, expected):
        try:
            torch.testing.assert_close(a, e, rtol=tol, atol=tol)
        except AssertionError as error:
            raise AssertionError(f"B5 {label}: the kernel disagrees with its reference\n{error}") from None


def paged_batch(query_lens: list[int], seq_lens: list[int], hkv: int, d: int):
    """A randomly filled cache [2, blocks, BLOCK_SIZE, hkv, d] whose blocks are handed out shuffled."""
    from corral.kernels.attention_metadata import AttentionMetadata
    blocks = [math.ceil(s / BLOCK_SIZE) for s in seq_lens]
    order = torch.randperm(sum(blocks) + 1, device=DEVICE, dtype=torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEVICE)
    for i, n in enumerate(blocks):
        tables[i, :n] = order[sum(blocks[:i]):sum(blocks[:i]) + n]
    cache = torch.randn(2, sum(blocks) + 1, BLOCK_SIZE, hkv, d, device=DEVICE, dtype=DTYPE)
    starts = torch.tensor([0] + query_lens, device=DEVICE).cumsum(0).to(torch.int32)
    metadata = AttentionMetadata(torch.zeros(sum(query_lens), dtype=torch.int64, device=DEVICE), starts,
                                 torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), tables,
                                 max(query_lens), max(seq_lens))
    return cache, metadata


def decode_inputs(m: dict, seq_lens: list[int]):
    """One query token per sequence over caches of these lengths: (q, out, metadata, the cache and
    its random copies (four times L2 in all), KV bytes), or None where they do not fit."""
    kv_bytes = sum(seq_lens) * m["hkv"] * m["d"] * 2 * DTYPE.itemsize
    if kv_bytes > torch.cuda.mem_get_info()[0] / 3:  # the cache, its reference's gathers, the other copies
        return None
    cache, md = paged_batch([1] * len(seq_lens), seq_lens, m["hkv"], m["d"])
    q = torch.randn(len(seq_lens), m["hq"], m["d"], device=DEVICE, dtype=DTYPE)
    caches = [cache] + [torch.randn_like(cache) for _ in range(copies_for(kv_bytes) - 1)]
    return q, torch.empty_like(q), md, caches, kv_bytes


def decode_case(m: dict, batch: int, context: int):
    """-> (label, calls over input copies, bytes per call, FLOPs per call or None, time in a CUDA graph),
    or None where the cache does not fit."""
    from corral.kernels.decode_attention import DecodeWorkspace, paged_attention_decode
    from corral.kernels.paged_attention import paged_attention_ref
    if (inputs := decode_inputs(m, [context] * batch)) is None:
        return None
    q, out, md, caches, kv_bytes = inputs
    scale = m["d"] ** -0.5
    label = f"decode B={batch} S={context}"
    workspace = DecodeWorkspace()  # held across calls, as the engine's backend holds one
    check(label, [paged_attention_decode(q, caches[0], md, scale, out, workspace=workspace)],
          [paged_attention_ref(q, caches[0], md, scale)], 2e-2)
    calls = [lambda c=c: paged_attention_decode(q, c, md, scale, out, workspace=workspace) for c in caches]
    return label, calls, kv_bytes + 2 * q.numel() * DTYPE.itemsize, None, True


def decode_sweep(name: str, m: dict, copy_bw: float):
    """Decode attention over B1-like contexts (100..2048 tokens, varied, the longest first as the
    model runner lays out a batch) at each batch size, for every split count and longest slice
    (split_len): which ones the defaults should pick on this GPU. An unsplit launch ignores
    split_len, so it is timed once per batch."""
    import random

    from corral.kernels.decode_attention import DecodeWorkspace, default_split, paged_attention_decode
    from corral.kernels.paged_attention import paged_attention_ref
    rng, scale, workspace = random.Random(0), m["d"] ** -0.5, DecodeWorkspace()
    for batch in SWEEP_BATCHES:
        if (inputs := decode_inputs(m, sorted((rng.randint(100, 2048) for _ in range(batch)), reverse=True))) is None:
            print(f"{name}: decode sweep B={batch} skipped, its cache does not fit", flush=True)
            continue
        q, out, md, caches, kv_bytes = inputs
        default = default_split(batch, m["hkv"])
        expected = paged_attention_ref(q, caches[0], md, scale)
        unsplit = None
        for split_len in SWEEP_SPLIT_LENS:
            row = {1: unsplit} if unsplit else {}
            for splits in (s for s in (1, 2, 4, 8, 16, 32) if s not in row):
                kwargs = dict(num_splits=splits, workspace=workspace, split_len=split_len)
                check(f"decode sweep B={batch} splits={splits} split_len={split_len}",
                      [paged_attention_decode(q, caches[0], md, scale, out, **kwargs)], [expected], 2e-2)
                calls = [lambda c=c, kw=kwargs: paged_attention_decode(q, c, md, scale, out, **kw) for c in caches]
                row[splits] = kv_bytes / (time_ms(calls, graph=True) / 1e3)
            unsplit = row[1]
            best = max(row, key=row.get)
            print(f"{name} decode B={batch:3d} varied, slices <= {split_len:3d} keys: " + " ".join(
                f"{s}{'*' if (s, split_len) == default else ''}:{bw / 1e12:.2f}" for s, bw in row.items())
                + f" TB/s (* default; best {best})", flush=True)
            emit(dict(environment(), benchmark="B5-decode-sweep", model=name, batch=batch, split_len=split_len,
                      default_splits=default.num_splits, default_split_len=default.split_len,
                      best_splits=best, tb_s={s: round(bw / 1e12, 3) for s, bw in row.items()},
                      copy_tb_s=round(copy_bw / 1e12, 3)))
        del inputs, caches
        torch.cuda.empty_cache()


def prefill_case(m: dict, query_lens: list[int]):
    from corral.kernels.paged_attention import paged_attention_prefill, paged_attention_ref
    cache, md = paged_batch(query_lens, query_lens, m["hkv"], m["d"])
    q = torch.randn(sum(query_lens), m["hq"], m["d"], device=DEVICE, dtype=DTYPE)
    scale, out = m["d"] ** -0.5, torch.empty_like(q)
    label = f"prefill {len(query_lens)}x{query_lens[0]}"
    check(label, [paged_attention_prefill(q, cache, md, scale, out)], [paged_attention_ref(q, cache, md, scale)], 2e-2)
    kv_bytes = sum(query_lens) * m["hkv"] * m["d"] * 2 * DTYPE.itemsize
    flops = sum(4 * n * (n + 1) // 2 * m["hq"] * m["d"] for n in query_lens)  # causal: QK^T and PV
    calls = [lambda: paged_attention_prefill(q, cache, md, scale, out)]
    return label, calls, kv_bytes + 2 * q.numel() * DTYPE.itemsize, flops, False


def b1_chunk_lens(tokens: int = 16384, seed: int = 0) -> list[int]:
    """Prompt lengths of one B1 prefill chunk: uniform 100..1024, the last one cut to fill it."""
    import random
    rng, lens = random.Random(seed), []
    while sum(lens) < tokens:
        lens.append(min(rng.randint(100, 1024), tokens - sum(lens)))
    return lens


def prefill_sweep(name: str, m: dict, matmul_rate: float):
    """Prefill attention over B1's prefill chunk, one long prompt, eight 1024-token prompts and a
    2048-token chunk over 6144 tokens of cached context: TFLOP/s of each configuration in
    PREFILL_SWEEP against the default's."""
    from corral.kernels.paged_attention import paged_attention_prefill, paged_attention_ref
    from triton.runtime.errors import OutOfResources
    shapes = {"B1 chunk": (b1_chunk_lens(), None), "1x4096": ([4096], None), "8x1024": ([1024] * 8, None),
              "2048 over 8192": ([2048], [8192])}
    for label, (query_lens, seq_lens) in shapes.items():
        seq_lens = seq_lens or query_lens
        cache, md = paged_batch(query_lens, seq_lens, m["hkv"], m["d"])
        q = torch.randn(sum(query_lens), m["hq"], m["d"], device=DEVICE, dtype=DTYPE)
        scale, out = m["d"] ** -0.5, torch.empty_like(q)
        expected = paged_attention_ref(q, cache, md, scale)
        flops = sum(4 * n * (s - n + (n + 1) / 2) * m["hq"] * m["d"] for n, s in zip(query_lens, seq_lens))
        results = {}
        for cfg in [None] + PREFILL_SWEEP:
            kwargs = dict(zip(("block_m", "block_n", "num_warps", "num_stages"), cfg or ()))
            call = functools.partial(paged_attention_prefill, q, cache, md, scale, out, **kwargs)
            try:
                out.fill_(float("nan"))
                check(f"prefill sweep {label} {cfg}", [call()], [expected], 2e-2)
                results[cfg or "default"] = flops / (time_ms([call], graph=False) / 1e3)
            except OutOfResources:
                continue
        ranked = sorted(results, key=results.get, reverse=True)
        print(f"{name} prefill {label}: default {results['default'] / 1e12:.0f} TFLOP/s; best " + " ".join(
            f"{results[c] / 1e12:.0f}{list(c) if c != 'default' else '(default)'}" for c in ranked[:5]), flush=True)
        emit(dict(environment(), benchmark="B5-prefill-sweep", model=name, case=label,
                  tflop_s={str(c): round(v / 1e12, 1) for c, v in results.items()},
                  matmul_tflop_s=round(matmul_rate / 1e12, 1)))
        del cache, q, out, expected
        torch.cuda.empty_cache()


def small_inputs(kernel: str, m: dict, tokens: int, seed: int) -> tuple:
    """Inputs as the model layers pass them: q, k, v are strided views of one fused qkv output."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, device=DEVICE, generator=gen).to(DTYPE)
    hq, hkv, d = m["hq"], m["hkv"], m["d"]
    qkv = randn(tokens, (hq + 2 * hkv) * d)
    q, k, v = (t.view(tokens, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    positions = torch.randint(0, 4096, (tokens,), device=DEVICE, generator=gen)
    if kernel == "fused_add_rms_norm":
        return randn(tokens, m["hidden"]), randn(tokens, m["hidden"]), 1 + randn(m["hidden"]) / 4, m["eps"]
    if kernel == "rotary":
        return q, k, positions, rope_table(d, m["theta"])
    if kernel == "qk_norm_rotary":
        return q, k, positions, rope_table(d, m["theta"]), 1 + randn(d) / 4, 1 + randn(d) / 4, m["eps"]
    if kernel == "silu_and_mul":
        return (randn(tokens, 2 * m["inter"]),)
    if kernel == "store_kv_cache":
        blocks = 2 * math.ceil(tokens / BLOCK_SIZE) + 1
        slots = torch.randperm(blocks * BLOCK_SIZE, device=DEVICE, generator=gen)[:tokens]
        return k, v, torch.zeros(2, blocks, BLOCK_SIZE, hkv, d, device=DEVICE, dtype=DTYPE), slots
    raise ValueError(kernel)


@functools.cache
def rope_table(d: int, theta: float) -> torch.Tensor:
    """One table per model, shared by every input copy, as one model's layers share it."""
    from corral.kernels.rotary import build_cos_sin_cache
    return build_cos_sin_cache(d, 4096, theta, torch.device(DEVICE))


def small_functions(kernel: str):
    """(kernel, reference), each returning the tensors it produced or changed in place."""
    from corral.kernels import activation, kv_cache, norm, qk_norm_rotary, rotary

    def in_place(fn, *changed):
        return lambda *a: (fn(*a), tuple(a[i] for i in changed))[1]

    return {"fused_add_rms_norm": (norm.fused_add_rms_norm, norm.fused_add_rms_norm_ref),
            "rotary": (in_place(rotary.apply_rotary, 0, 1), in_place(rotary.apply_rotary_ref, 0, 1)),
            "qk_norm_rotary": (in_place(qk_norm_rotary.qk_norm_rotary, 0, 1),
                               in_place(qk_norm_rotary.qk_norm_rotary_ref, 0, 1)),
            "silu_and_mul": (lambda x: (activation.silu_and_mul(x),), lambda x: (activation.silu_and_mul_ref(x),)),
            "store_kv_cache": (in_place(kv_cache.store_kv_cache, 2), in_place(kv_cache.store_kv_cache_ref, 2)),
            }[kernel]


def small_bytes(kernel: str, m: dict, tokens: int) -> int:
    hq, hkv, d, e = m["hq"], m["hkv"], m["d"], DTYPE.itemsize
    return tokens * {"fused_add_rms_norm": 4 * m["hidden"] * e,                 # x, residual in; out, residual out
                     "rotary": 2 * (hq + hkv) * d * e + d * 4 + 8,              # q, k in and out; cos/sin; position
                     "qk_norm_rotary": 2 * (hq + hkv) * d * e + d * 4 + 8,
                     "silu_and_mul": 3 * m["inter"] * e,                         # gate, up in; out
                     "store_kv_cache": 4 * hkv * d * e + 8}[kernel]             # k, v in; both into the cache


def small_case(kernel: str, m: dict, tokens: int):
    fn, ref = small_functions(kernel)
    label = f"{kernel} T={tokens}"
    check(label, fn(*small_inputs(kernel, m, tokens, 0)), ref(*small_inputs(kernel, m, tokens, 0)),
          0 if kernel == "store_kv_cache" else 2e-2)
    nbytes = small_bytes(kernel, m, tokens)
    copies = copies_for(nbytes) if tokens == 1 else 1
    inputs = [small_inputs(kernel, m, tokens, i) for i in range(copies)]
    calls = [lambda a=a: fn(*a) for a in inputs]
    return label, calls, nbytes, None, tokens == 1


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)


def copies_for(nbytes: int) -> int:
    return max(1, min(64, math.ceil(4 * l2_bytes() / max(nbytes, 1))))


def time_ms(calls: list, graph: bool) -> float:
    """Median ms per call."""
    from triton.testing import do_bench, do_bench_cudagraph
    if graph:
        return do_bench_cudagraph(lambda: [c() for c in calls], rep=50, return_mode="median") / len(calls)
    return do_bench(calls[0], warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes/s (read plus write) of a 1 GiB device-to-device copy, measured now."""
    from triton.testing import do_bench
    src, dst = (torch.empty(2**30, dtype=torch.uint8, device=DEVICE) for _ in range(2))
    return 2 * 2**30 / (do_bench(lambda: dst.copy_(src), return_mode="median") / 1e3)


def ceilings() -> tuple[float, float]:
    """(copy bytes/s, bf16 matmul FLOP/s), measured now."""
    from triton.testing import do_bench
    copy = copy_bandwidth()
    a, b = (torch.randn(8192, 8192, device=DEVICE, dtype=DTYPE) for _ in range(2))
    matmul = 2 * 8192**3 / (do_bench(lambda: a @ b, return_mode="median") / 1e3)
    return copy, matmul


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-4b,llama-2-7b")
    ap.add_argument("--kernels", default=",".join(KERNELS), help=f"any of {', '.join(KERNELS)}")
    ap.add_argument("--decode-sweep", action="store_true",
                    help="only decode attention over varied contexts, for every split count and split_len")
    ap.add_argument("--prefill-sweep", action="store_true",
                    help="only prefill attention at B1 and long-prompt shapes, for each tile, warp and stage count")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks.kernels (B5) times Triton kernels on a CUDA GPU, and this machine has none")
    copy_bw, matmul_rate = ceilings()
    print(f"copy {copy_bw / 1e12:.2f} TB/s, bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s", flush=True)
    kernels = args.kernels.split(",")
    for name in args.models.split(","):
        m = model_shapes(name)
        if args.decode_sweep:
            decode_sweep(name, m, copy_bw)
            continue
        if args.prefill_sweep:
            prefill_sweep(name, m, matmul_rate)
            continue
        cases = [lambda m=m, b=b, s=s: decode_case(m, b, s) for b, s in DECODE if "decode" in kernels]
        cases += [lambda m=m, q=q: prefill_case(m, q) for q in PREFILL if "prefill" in kernels]
        cases += [lambda m=m, k=k, t=t: small_case(k, m, t) for k in KERNELS[2:] if k in kernels for t in TOKENS
                  if k != "qk_norm_rotary" or m["qwen3"]]
        for make in cases:
            if (case := make()) is None:
                print(f"{name}: a decode case skipped, its cache does not fit", flush=True)
                continue
            label, calls, nbytes, flops, graph = case
            ms = time_ms(calls, graph)
            record = dict(environment(), benchmark="B5", model=name, case=label, kernel=label.split()[0],
                          us=round(ms * 1e3, 2), bytes=nbytes, tb_s=round(nbytes / ms / 1e9, 3),
                          copy_fraction=round(nbytes / (ms / 1e3) / copy_bw, 3), input_copies=len(calls),
                          timing="cuda graph" if graph else "events", copy_tb_s=round(copy_bw / 1e12, 3),
                          matmul_tflop_s=round(matmul_rate / 1e12, 1))
            if flops:
                record.update(tflop_s=round(flops / ms / 1e9, 1),
                              matmul_fraction=round(flops / (ms / 1e3) / matmul_rate, 3))
            emit(record)
            del calls, case
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
