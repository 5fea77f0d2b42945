"""Skinny linear layers at decode shapes: corral's skinny_linear (Triton) against F.linear (cuBLAS).

    python -m benchmarks.gemv [--models qwen3-4b,qwen3-0.6b,llama-2-7b] [--m 1,2,4,8] [--no-sweep]

For each model's four linear layers (qkv, o_proj, gate_up, down; no bias) and each token count M:
skinny_linear is checked against F.linear in fp32 once, then cuBLAS, skinny_linear's default
configuration and a small sweep of forced ones (tiles x split-K x warps, then pipeline stages for
the best of those) are timed. Timing: one CUDA graph of many calls over rotating weight copies
(four times L2 in all, so no weight stays in L2; x and y stay there, as in a decode step), replayed
several times; the median per call. TB/s counts weight bytes only. One line and one JSON record
per layer; one per model with the sums over its four layers, which is what a decode step pays.
"""
import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources

from benchmarks.common import emit, environment
from benchmarks.kernels import copies_for, copy_bandwidth, model_shapes

DEVICE = "cuda"
CALLS_PER_GRAPH = 128
REPLAYS = 9
# (block_n, block_k): the elementwise path (M == 1), then the tl.dot one
TILES = {True: [(8, 512), (16, 512), (32, 256)], False: [(32, 256), (64, 128), (128, 64)]}
STAGES = {True: (1, 2, 3, 4), False: (3, 4, 5, 6)}


def layer_shapes(name: str) -> dict[str, tuple[int, int]]:
    """{layer: (N, K)} for the model's decode linears (weights [N, K])."""
    m = model_shapes(name)
    hidden, inter, d = m["hidden"], m["inter"], m["d"]
    return {"qkv": ((m["hq"] + 2 * m["hkv"]) * d, hidden), "o_proj": (hidden, m["hq"] * d),
            "gate_up": (2 * inter, hidden), "down": (hidden, inter)}


def sweep_configs(m: int, n: int, k: int, limits: tuple) -> list[dict]:
    """Tiles x split-K (the default's for the tile, half and twice it) x 4 or 8 warps, all at the
    default stage count for each: at most 18 forced configurations, each a distinct launch."""
    from corral.kernels.gemv import choose_config
    seen, out = set(), []
    for block_n, block_k in TILES[m == 1]:
        auto = choose_config(m, n, k, *limits, block_n=block_n, block_k=block_k).split_k
        for split in (max(1, auto // 2), auto, 2 * auto):
            for num_warps in (4, 8):
                cfg = choose_config(m, n, k, *limits, block_n=block_n, block_k=block_k, split_k=split,
                                    num_warps=num_warps)
                if cfg not in seen:
                    seen.add(cfg)
                    out.append(cfg._asdict())
    return out


def stage_configs(m: int, best: dict) -> list[dict]:
    return [dict(best, num_stages=s) for s in STAGES[m == 1] if s != best["num_stages"]]


def label(cfg: dict) -> str:
    return (f"{cfg['block_n']}x{cfg['block_k']} split{cfg['split_k']} w{cfg['num_warps']} "
            f"st{cfg['num_stages']}")


def graph_us(calls: list) -> float:
    """Median us per call: the calls (one per weight copy), repeated to CALLS_PER_GRAPH or more,
    captured in one CUDA graph and replayed REPLAYS times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: compiles, workspaces, cuBLAS handles
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    reps = math.ceil(CALLS_PER_GRAPH / len(calls))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for call in calls:
                call()
    graph.replay()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (reps * len(calls)))
    del graph
    return statistics.median(times)


def check(what: str, actual: torch.Tensor, expected: torch.Tensor):
    err = ((actual.float() - expected).norm() / expected.norm()).item()
    if not err < 1e-2:  # bf16 output rounding is about 2e-3; NaN fails too
        raise AssertionError(f"gemv {what}: relative error {err:.2e} against F.linear in fp32")


def bench_layer(name: str, layer: str, m: int, n: int, k: int, dtype: torch.dtype, sweep: bool,
                env: dict, copy_bw: float) -> dict:
    from corral.kernels.gemv import SkinnyLinearWorkspace, choose_config, skinny_linear
    nbytes = n * k * dtype.itemsize
    weights = [(torch.randn(n, k, device=DEVICE) / k ** 0.5).to(dtype) for _ in range(copies_for(nbytes))]
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    workspace = SkinnyLinearWorkspace()
    limits = workspace.limits(x.device)
    expected = F.linear(x.float(), weights[0].float())
    what = f"{name} {layer} M={m}"

    def skinny_us(**forced) -> float:
        check(f"{what} {forced or 'default'}", skinny_linear(x, weights[0], None, workspace, **forced), expected)
        return graph_us([lambda w=w: skinny_linear(x, w, None, workspace, **forced) for w in weights])

    def time_forced(cfg: dict) -> bool:
        try:
            results[label(cfg)] = skinny_us(**cfg)
        except OutOfResources:  # e.g. too many stages for shared memory
            return False
        return True

    cublas = graph_us([lambda w=w: F.linear(x, w) for w in weights])
    default_cfg = choose_config(m, n, k, *limits)._asdict()
    default = skinny_us()
    results = {label(default_cfg): default}
    if sweep:
        configs = [cfg for cfg in sweep_configs(m, n, k, limits) if time_forced(cfg)]
        best = min(configs, key=lambda cfg: results[label(cfg)])
        for cfg in stage_configs(m, best):
            time_forced(cfg)
    best_label = min(results, key=results.get)
    tb = lambda us: nbytes / us / 1e6
    print(f"{name:11s} M={m:<2d} {layer:7s} {n:5d}x{k:<5d} {nbytes / 2**20:6.1f} MiB | cuBLAS {cublas:7.2f} us "
          f"{tb(cublas):4.2f} TB/s | default {default:7.2f} us {tb(default):4.2f} TB/s [{label(default_cfg)}] | "
          f"best {results[best_label]:7.2f} us {tb(results[best_label]):4.2f} TB/s [{best_label}]", flush=True)
    record = dict(env, benchmark="gemv", model=name, layer=layer, m=m, n=n, k=k, dtype=str(dtype).split(".")[-1],
                  weight_bytes=nbytes, weight_copies=len(weights), copy_tb_s=round(copy_bw / 1e12, 3),
                  cublas_us=round(cublas, 2), cublas_tb_s=round(tb(cublas), 3),
                  default_us=round(default, 2), default_tb_s=round(tb(default), 3), default_config=default_cfg,
                  best_us=round(results[best_label], 2), best_tb_s=round(tb(results[best_label]), 3),
                  best_config=best_label, sweep_us={c: round(us, 2) for c, us in results.items()})
    emit(record)
    del weights
    torch.cuda.empty_cache()
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="qwen3-4b,qwen3-0.6b,llama-2-7b")
    ap.add_argument("--m", default="1,2,4,8", help="token counts (rows of x), 1 to 64")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--no-sweep", action="store_true", help="time cuBLAS and the default only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gemv times a Triton kernel on a CUDA GPU, and this machine has none")
    dtype = getattr(torch, args.dtype)
    ms = [int(m) for m in args.m.split(",")]
    env, copy_bw = environment(), copy_bandwidth()
    print(f"copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    for name in args.models.split(","):
        for m in ms:
            records = [bench_layer(name, layer, m, n, k, dtype, not args.no_sweep, env, copy_bw)
                       for layer, (n, k) in layer_shapes(name).items()]
            total = {key: round(sum(r[key] for r in records), 2) for key in ("cublas_us", "default_us", "best_us")}
            nbytes = sum(r["weight_bytes"] for r in records)
            print(f"{name:11s} M={m:<2d} all four: cuBLAS {total['cublas_us']:.1f} us, default "
                  f"{total['default_us']:.1f} us ({total['cublas_us'] / total['default_us']:.2f}x), best "
                  f"{total['best_us']:.1f} us ({total['cublas_us'] / total['best_us']:.2f}x)", flush=True)
            emit(dict(env, benchmark="gemv-model", model=name, m=m, weight_bytes=nbytes, **total,
                      default_speedup=round(total["cublas_us"] / total["default_us"], 3),
                      best_speedup=round(total["cublas_us"] / total["best_us"], 3)))


if __name__ == "__main__":
    main()
