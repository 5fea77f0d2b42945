"""B6 with one model idle (elastic KV memory): B4's all-at-once load on one model of a server that also holds
an idle one, under one memory budget and `--kv-sharing elastic`, against the same load on that model served
alone with the same budget. The target: the busy model's output tokens/s together at least 0.95 of alone,
because the idle model's KV pages move to it.

Each case is a real `corral serve` with dummy weights, warmed up as B4 is; while the load runs, GET
/v1/models is read every 20 ms for each model's KV grant (granted, needed and reserved blocks), and the
records carry the busy model's largest grant and need and the idle model's smallest grant.

    python -m benchmarks.elastic_kv                                  # Qwen3-4B busy, Llama-2-7B idle
    python -m benchmarks.elastic_kv --models DIR_A,DIR_B --device cpu --memory-budget 24MiB \\
        --num-requests 16 --input-len 64 --output-len 16 --max-model-len 256    # smoke test

The default budget is B6's, 0.9 of the GPU (0.45 for each model). It needs the engines to back their KV
ranges through CUDA virtual memory (the `gpu` extra): without it each engine allocates its whole reserved
range (the budget less its own weights), so two engines need about twice the budget, and `--gpu-fraction
0.45` is the most that fits.
"""
import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

from benchmarks.common import emit, environment
from benchmarks.served_models import ModelsLog, memory_budget
from benchmarks.serving import Server, measure, prepare_model, run, warm_up


async def load_with_grants(url: str, busy: str, idle: str | None, args) -> tuple[dict, dict]:
    """B4's all-at-once load on `busy`; its summary and what the grants did meanwhile."""
    log, stop = ModelsLog(), asyncio.Event()
    follower = asyncio.create_task(log.follow(url, 0.02, stop))
    summary = (await measure(url, [busy], math.inf, args.num_requests, args, args.seed))[busy]
    stop.set()
    await follower
    extreme = lambda model, key, pick=max: pick(log.kv_cache(model, key), default=None)
    grants = {"busy_granted_blocks_max": extreme(busy, "granted_blocks"),
              "busy_needed_blocks_max": extreme(busy, "needed_blocks"),
              "busy_reserved_blocks": extreme(busy, "max_blocks"), "busy_block_bytes": extreme(busy, "block_bytes")}
    if idle is not None:
        grants.update(idle_granted_blocks_min=extreme(idle, "granted_blocks", min),
                      idle_min_blocks=extreme(idle, "min_blocks"))
    return summary, grants


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="qwen3-4b,llama-2-7b", help="the busy model, then the idle one: benchmark "
                                                                  "config names or config.json directories")
    p.add_argument("--memory-budget", help="e.g. 36GiB (default: --gpu-fraction of the GPU)")
    p.add_argument("--gpu-fraction", type=float, default=0.9)
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-concurrency", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--startup-timeout", type=float, default=900)
    args = p.parse_args(argv)
    names = args.models.split(",")
    if len(names) != 2:
        raise SystemExit("--models takes two: the busy model, then the idle one")
    dirs = {Path(n).name if Path(n).is_dir() else n: prepare_model(n) for n in names}
    busy, idle = list(dirs)
    args.max_token_id = min(10000, min(json.loads((Path(d) / "config.json").read_text())["vocab_size"]
                                       for d in dirs.values()) - 1)
    budget = memory_budget(args.memory_budget, args.device, args.gpu_fraction)
    base = dict(environment(), benchmark="B6-idle", busy=busy, idle=idle, memory_budget_bytes=budget,
                kv_sharing="elastic", num_requests=args.num_requests, input_len=args.input_len,
                output_len=args.output_len, max_concurrency=args.max_concurrency)
    results = {}
    for mode, served in (("together", dirs), ("alone", {busy: dirs[busy]})):
        with Server(served, args, None, dict(memory_budget_bytes=budget, kv_sharing="elastic")) as server:
            started = time.perf_counter()
            server.wait_ready(args.startup_timeout)
            print(f"{mode}: server ready in {time.perf_counter() - started:.0f} s", flush=True)
            run(warm_up(server.url, busy, args))
            summary, grants = run(load_with_grants(server.url, busy, idle if mode == "together" else None, args))
        results[mode] = summary
        emit(dict(base, mode=mode, **summary, **grants))
    ratio = results["together"]["output_tok_s"] / results["alone"]["output_tok_s"]
    emit(dict(base, mode="together_vs_alone", output_tok_s_together=results["together"]["output_tok_s"],
              output_tok_s_alone=results["alone"]["output_tok_s"], ratio=round(ratio, 3), target=0.95))
    return int(any(r["failed"] for r in results.values()))


if __name__ == "__main__":
    sys.exit(main())
