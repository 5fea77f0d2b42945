"""Kernel timings on the GPU: decode / prefill attention config sweeps and elementwise kernels."""
import itertools, math, sys, time
import torch, triton
from triton.testing import do_bench

from corral.backends.base import AttentionMetadata
from corral.kernels import decode_attention as da, paged_attention as pa
from corral.kernels.activation import silu_and_mul
from corral.kernels.norm import rms_norm, fused_add_rms_norm
from corral.kernels.rotary import apply_rotary, build_cos_sin_cache

dev = torch.device("cuda")
MODES = set((sys.argv[1] if len(sys.argv) > 1 else "all").split(","))
print(torch.__version__, triton.__version__, torch.cuda.get_device_name())


def batch(query_lens, seq_lens, hkv, d, block_size=16, dtype=torch.bfloat16):
    nblk = [math.ceil(s / block_size) for s in seq_lens]
    total = sum(nblk) + 1
    perm = torch.randperm(total, device=dev, dtype=torch.int32)
    bt = torch.zeros(len(seq_lens), max(nblk), dtype=torch.int32, device=dev)
    used = 0
    for i, n in enumerate(nblk):
        bt[i, :n] = perm[used:used + n]; used += n
    cache = torch.randn(2, total, block_size, hkv, d, device=dev, dtype=dtype)
    qsl = torch.tensor([0] + list(query_lens), device=dev).cumsum(0).to(torch.int32)
    md = AttentionMetadata(torch.zeros(sum(query_lens), dtype=torch.int64, device=dev), qsl,
                           torch.tensor(seq_lens, dtype=torch.int32, device=dev), bt,
                           max(query_lens), max(seq_lens))
    return cache, md


def layer_caches(cache):
    """Copies of the cache, like a model's layers, so that together they overflow the 50 MB L2."""
    n = max(1, min(36, math.ceil(200e6 / (cache.numel() * cache.element_size()))))
    return [cache] + [torch.randn_like(cache) for _ in range(n - 1)]


def bench(fn, graph=False):
    if graph:
        fn()
        return triton.testing.do_bench_cudagraph(fn, rep=50)
    return do_bench(fn, warmup=25, rep=100)


def decode_launch(q, cache, md, scale, out, block_n, warps, stages, splits):
    group, bs = pa.check_attention_shapes(q, cache)
    B, hq, d = q.shape; hkv = cache.shape[3]
    po = torch.empty(B, hq, splits, d, dtype=torch.float32, device=dev) if splits > 1 else out
    pl = torch.empty(B, hq, splits, dtype=torch.float32, device=dev) if splits > 1 else out
    k, v = cache[0], cache[1]
    def run():
        da._decode_kernel[(B, hkv, splits)](
            q, k, v, out, po, pl, md.block_tables, md.seq_lens, md.query_start_loc, scale * pa.LOG2E,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), k.stride(0), k.stride(1), k.stride(2),
            md.block_tables.stride(0), GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)),
            HEAD_DIM=d, BLOCK_N=block_n, BLOCK_SIZE=bs, NUM_SPLITS=splits, PRECISION="tf32",
            num_warps=warps, num_stages=stages)
        if splits > 1:
            da._reduce_kernel[(B, hq)](po, pl, out, md.query_start_loc, out.stride(0), out.stride(1),
                                       HEAD_DIM=d, NUM_SPLITS=splits, num_warps=4)
    return run


MODELS = {"qwen3-4b": (32, 8, 128), "llama2-7b": (32, 32, 128), "qwen3-0.6b": (16, 8, 128)}

if MODES & {"all", "decode"}:
    print("\n== decode (default config): time, achieved KV bandwidth")
    for name, (hq, hkv, d) in MODELS.items():
        for B, S, bs in [(1, 1024, 16), (1, 8192, 16), (1, 32768, 16), (8, 4096, 16), (32, 2048, 16),
                         (64, 1024, 16), (256, 1024, 16), (256, 512, 16), (64, 1024, 256), (1, 8192, 256)]:
            cache, md = batch([1] * B, [S] * B, hkv, d, bs)
            q = torch.randn(B, hq, d, device=dev, dtype=torch.bfloat16)
            caches = layer_caches(cache)
            def step():
                for c in caches:
                    da.paged_attention_decode(q, c, md, d ** -0.5)
            ms = bench(step, graph=True) / len(caches)
            del caches
            gb = B * S * hkv * d * 2 * 2 / 1e9
            print(f"{name:11s} B={B:4d} S={S:6d} bs={bs:3d} splits={da.default_num_splits(B, hkv, dev):2d} "
                  f"{ms * 1e3:8.1f} us {gb / ms:6.2f} TB/s")
            del cache

if MODES & {"all", "decode_sweep"}:
    print("\n== decode sweep: block_n, warps, stages, splits -> us")
    for name, B, S in [("qwen3-4b", 1, 1024), ("qwen3-4b", 1, 8192), ("qwen3-4b", 8, 4096), ("qwen3-4b", 64, 1024), ("llama2-7b", 32, 2048), ("qwen3-4b", 256, 512)]:
        hq, hkv, d = MODELS[name]
        cache, md = batch([1] * B, [S] * B, hkv, d, 16)
        q = torch.randn(B, hq, d, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        gb = B * S * hkv * d * 4 / 1e9
        default = da.default_num_splits(B, hkv, dev)
        caches = layer_caches(cache)
        res = []
        for bn, w, st, sp in itertools.product([32, 64, 128], [4, 8], [2, 3], [1, 4, 16, 32, 64]):
            if B * hkv * sp > 132 * 16 or (sp > 1 and S // sp < 32): continue
            try:
                runs = [decode_launch(q, c, md, d ** -0.5, out, bn, w, st, sp) for c in caches]
                ms = bench(lambda: [r() for r in runs], graph=True) / len(runs)
            except Exception as e:
                print("fail", bn, w, st, sp, type(e).__name__); continue
            res.append((ms, bn, w, st, sp))
        res.sort()
        print(f"{name} B={B} S={S} default splits={default}: best " +
              "; ".join(f"{ms*1e3:.1f}us {gb/ms:.2f}TB/s bn={bn} w={w} st={st} sp={sp}" for ms, bn, w, st, sp in res[:5]))
        cur = [f"{r[0]*1e3:.1f}us sp={r[4]}" for r in res if r[1:4] == (64, 4, 2)]
        print("   current bn/w/st by splits:", cur)
        del cache, caches


def prefill_launch(q, cache, md, scale, out, block_m, block_n, warps, stages):
    group, bs = pa.check_attention_shapes(q, cache)
    gp2 = triton.next_power_of_2(group); bq = max(1, block_m // gp2); d = q.shape[2]
    k, v = cache[0], cache[1]
    grid = (md.num_seqs, triton.cdiv(md.max_query_len, bq), cache.shape[3])
    def run():
        pa._varlen_kernel[grid](
            q, k, v, out, md.block_tables, md.seq_lens, md.query_start_loc, scale * pa.LOG2E,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), k.stride(0), k.stride(1), k.stride(2),
            md.block_tables.stride(0), GROUP=group, GROUP_P2=gp2, BLOCK_Q=bq, HEAD_DIM=d,
            BLOCK_N=block_n, BLOCK_SIZE=bs, PRECISION="tf32", num_warps=warps, num_stages=stages)
    return run


def prefill_flops(query_lens, seq_lens, hq, d):
    pairs = sum(q * (s - q) + q * (q + 1) / 2 for q, s in zip(query_lens, seq_lens))
    return 4 * pairs * hq * d


PREFILL = [("qwen3-4b 1x4096", [4096], [4096]), ("qwen3-4b 8x1024", [1024] * 8, [1024] * 8),
           ("qwen3-4b chunk 4x512 on 4096", [512] * 4, [4096] * 4), ("llama2-7b 1x4096", [4096], [4096]),
           ("qwen3-4b 1x16384", [16384], [16384])]

if MODES & {"all", "prefill"}:
    print("\n== prefill (default config) vs torch SDPA on dense causal")
    for label, ql, sl in PREFILL:
        name = label.split()[0]; hq, hkv, d = MODELS[name]
        cache, md = batch(ql, sl, hkv, d, 16)
        q = torch.randn(sum(ql), hq, d, device=dev, dtype=torch.bfloat16)
        ms = bench(lambda: pa.paged_attention_prefill(q, cache, md, d ** -0.5))
        fl = prefill_flops(ql, sl, hq, d)
        line = f"{label:30s} ours {ms*1e3:8.1f} us {fl/ms/1e9:6.1f} TFLOP/s"
        if ql == sl:
            B, S = len(ql), ql[0]
            qd = torch.randn(B, hq, S, d, device=dev, dtype=torch.bfloat16)
            kd = torch.randn(B, hkv, S, d, device=dev, dtype=torch.bfloat16); vd = torch.randn_like(kd)
            sd = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True))
            line += f" | sdpa {sd*1e3:8.1f} us {fl/sd/1e9:6.1f} TFLOP/s"
        print(line)
        del cache

if MODES & {"all", "prefill_sweep"}:
    print("\n== prefill sweep: block_m, block_n, warps, stages")
    for label, ql, sl in [PREFILL[0], PREFILL[2], PREFILL[3]]:
        name = label.split()[0]; hq, hkv, d = MODELS[name]
        cache, md = batch(ql, sl, hkv, d, 16)
        q = torch.randn(sum(ql), hq, d, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        fl = prefill_flops(ql, sl, hq, d)
        res = []
        for bm, bn, w, st in itertools.product([64, 128], [32, 64, 128], [4, 8], [1, 2, 3]):
            try:
                ms = bench(prefill_launch(q, cache, md, d ** -0.5, out, bm, bn, w, st))
            except Exception as e:
                print("fail", bm, bn, w, st, type(e).__name__); continue
            res.append((ms, bm, bn, w, st))
        res.sort()
        print(label + ": best " + "; ".join(f"{ms*1e3:.0f}us {fl/ms/1e9:.0f}TF bm={bm} bn={bn} w={w} st={st}" for ms, bm, bn, w, st in res[:5]))
        print("   current (128,64,8,2):", [f"{r[0]*1e3:.0f}us" for r in res if r[1:] == (128, 64, 8, 2)])
        del cache

if MODES & {"all", "small"}:
    print("\n== elementwise kernels")
    for T in (1, 64, 8192):
        for H in (2560, 4096):
            x = torch.randn(T, H, device=dev, dtype=torch.bfloat16); r = torch.randn_like(x)
            w = torch.randn(H, device=dev, dtype=torch.bfloat16)
            ms = bench(lambda: rms_norm(x, w, 1e-6), True); ms2 = bench(lambda: fused_add_rms_norm(x, r, w, 1e-6), True)
            print(f"rms_norm T={T} H={H}: {ms*1e3:.1f} us {T*H*4/ms/1e9:.2f} TB/s | fused_add {ms2*1e3:.1f} us {T*H*8/ms2/1e9:.2f} TB/s")
        qkv = torch.randn(T, 48 * 128, device=dev, dtype=torch.bfloat16)
        q = qkv[:, :32 * 128].view(T, 32, 128); k = qkv[:, 32 * 128:40 * 128].view(T, 8, 128)
        w = torch.randn(128, device=dev, dtype=torch.bfloat16)
        ms = bench(lambda: rms_norm(q, w, 1e-6), True)
        print(f"qk-norm q view T={T}: {ms*1e3:.1f} us {T*32*128*4/ms/1e9:.2f} TB/s")
        cs = build_cos_sin_cache(128, 40960, 1e6, dev); pos = torch.randint(0, 40960, (T,), device=dev)
        ms = bench(lambda: apply_rotary(q, k, pos, cs), True)
        print(f"rotary T={T} (32+8 heads): {ms*1e3:.1f} us {T*40*128*4/ms/1e9:.2f} TB/s")
        for I in (9728, 11008):
            x = torch.randn(T, 2 * I, device=dev, dtype=torch.bfloat16)
            ms = bench(lambda: silu_and_mul(x), True)
            print(f"silu_and_mul T={T} I={I}: {ms*1e3:.1f} us {T*I*6/ms/1e9:.2f} TB/s")
