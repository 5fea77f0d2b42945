"""B8 (oversubscription): more models than the device holds, served by one `corral serve` under a memory
budget, with skewed Poisson traffic over them; then the same traffic against the same server that may only
unload and reload from disk (`--eviction unload`, Ollama's policy) instead of putting idle models to sleep.

By default four Llama-2-7B and four Qwen3-4B configs (about 86 GB of bf16 weights) under a budget of 0.9 of
the GPU. Each config's random checkpoint is written once to a local store and its copies are served under
names of their own from it (so a reload reads the same files, from the page cache once read). Every request
is a streamed /v1/completions of random token ids (ignore_eos) that must return all its tokens. The models'
states are read from GET /v1/models every --poll-interval seconds: sleeps, wakes, loads and unloads per
minute come from the changes seen (one faster than the interval is missed: on a GPU each moves gigabytes),
and a request "waited" when its model was seen not ready between its sending and its first token.

    python -m benchmarks.oversubscription
    python -m benchmarks.oversubscription --load-format dummy      # nothing written: loads make random weights
    python -m benchmarks.oversubscription --models DIR_A,DIR_B --device cpu --memory-budget 6MiB \\
        --duration 15 --rate 4 --max-model-len 256                  # smoke test (directories with config.json)
"""
import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.checkpoints import write_checkpoint
from benchmarks.common import emit, environment
from benchmarks.configs import num_params
from benchmarks.served_models import ModelsLog, memory_budget
from benchmarks.serving import Result, Server, make_prompts, new_client, one_request, prepare_model, run, warm_up

POLICIES = ("sleep", "unload")


@dataclass(slots=True, frozen=True)
class Arrival:
    at: float    # seconds after the traffic starts
    model: str


def skewed_poisson(models: list[str], rate: float, duration: float, zipf: float,
                   seed: int) -> tuple[list[str], list[Arrival]]:
    """Poisson arrivals at `rate` per second for `duration` seconds, each for a model drawn with weight
    1 / rank ** zipf; the ranks are a seeded shuffle of `models`, returned first (most requested first)."""
    rng = random.Random(seed)
    ranked = rng.sample(models, len(models))
    weights = [1 / (rank + 1) ** zipf for rank in range(len(ranked))]
    arrivals, at = [], rng.expovariate(rate)
    while at < duration:
        arrivals.append(Arrival(at, rng.choices(ranked, weights)[0]))
        at += rng.expovariate(rate)
    return ranked, arrivals


def transitions(log: ModelsLog) -> dict[str, int]:
    """Counts of sleep (ready -> sleeping), wake (sleeping -> loading or ready), load (unloaded -> loading or
    ready) and unload (ready or sleeping -> unloaded) seen over every model."""
    counts = dict.fromkeys(("sleep", "wake", "load", "unload"), 0)
    for name in log.samples[0][1] if log.samples else {}:
        states = [state for _, state in log.states(name)]
        for before, after in zip(states, states[1:]):
            if before == "ready" and after == "sleeping":
                counts["sleep"] += 1
            elif before in ("ready", "sleeping") and after == "unloaded":
                counts["unload"] += 1
            elif before == "sleeping" and after in ("loading", "ready"):
                counts["wake"] += 1
            elif before == "unloaded" and after in ("loading", "ready"):
                counts["load"] += 1
    return counts


def waited(log: ModelsLog, model: str, start: float, first_token: float) -> bool:
    """Was `model` seen not ready between `start` and `first_token` (with no sample between, just before)?"""
    states = log.states(model)
    seen = [state for t, state in states if start <= t <= first_token] or \
        [state for t, state in states if t < start][-1:]
    return any(state != "ready" for state in seen)


async def drive(url: str, arrivals: list[Arrival], prompts: list[list[int]], output_len: int,
                poll_interval: float) -> tuple[list[Result], ModelsLog, float]:
    """Sends each request at its arrival time; the results, the state log and the seconds it all took."""
    log, stop = ModelsLog(), asyncio.Event()
    follower = asyncio.create_task(log.follow(url, poll_interval, stop))
    async with new_client() as client:
        start, tasks = time.perf_counter(), []
        for arrival, prompt in zip(arrivals, prompts):
            await asyncio.sleep(max(0.0, start + arrival.at - time.perf_counter()))
            tasks.append(asyncio.create_task(one_request(client, url, arrival.model, prompt, output_len)))
        results = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
    stop.set()
    await follower
    return results, log, seconds


def summarize(arrivals: list[Arrival], results: list[Result], log: ModelsLog, seconds: float) -> dict:
    ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 1) if values else None
    ok = [(a, r) for a, r in zip(arrivals, results) if r.error is None]
    kept = [(r.ttft, waited(log, a.model, r.start, r.start + r.ttft)) for a, r in ok]
    after_wait = [ttft for ttft, w in kept if w]
    resident = [ttft for ttft, w in kept if not w]
    ttft = [r.ttft for _, r in ok]
    moves = transitions(log)
    per_minute = {f"{k}s_per_min": round(n * 60 / seconds, 2) for k, n in moves.items()}
    return {"requests": len(results), "served": len(ok), "failed": len(results) - len(ok),
            "first_error": next((r.error for r in results if r.error), None), "seconds": round(seconds, 1),
            "ttft_ms_p50": ms(ttft, 50), "ttft_ms_p99": ms(ttft, 99), "waited": len(after_wait),
            "ttft_ms_p50_waited": ms(after_wait, 50), "ttft_ms_p99_waited": ms(after_wait, 99),
            "ttft_ms_p50_resident": ms(resident, 50), "ttft_ms_p99_resident": ms(resident, 99),
            "evictions_per_min": round((moves["sleep"] + moves["unload"]) * 60 / seconds, 2), **per_minute,
            "transitions": moves}


def store(args) -> dict[str, str]:
    """{served name: model directory}: --copies names per model, sharing its directory."""
    models = {}
    for name in args.models.split(","):
        base = Path(name).name
        if args.load_format == "dummy":
            directory = prepare_model(name)
        else:
            directory = prepare_model(str(write_checkpoint(name, Path(args.store) / base)))
        models.update({f"{base}-{i + 1}": directory for i in range(args.copies)})
    return models


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama-2-7b,qwen3-4b", help="benchmark config names or config.json directories")
    p.add_argument("--copies", type=int, default=4, help="served names per model")
    p.add_argument("--load-format", default="auto", choices=("auto", "dummy"),
                   help="auto: the checkpoints written to --store; dummy: random weights made at each load")
    p.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "corral-bench-store"))
    p.add_argument("--memory-budget", help="e.g. 70GiB (default: --gpu-fraction of the GPU)")
    p.add_argument("--gpu-fraction", type=float, default=0.9)
    p.add_argument("--policies", default=",".join(POLICIES), help="--eviction values to run, in order")
    p.add_argument("--rate", type=float, default=4.0, help="requests/s over all models")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals")
    p.add_argument("--zipf", type=float, default=1.0, help="model i of the ranking gets weight 1 / i**zipf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=4096, help="each model's KV cache holds one such sequence")
    p.add_argument("--poll-interval", type=float, default=0.05)
    p.add_argument("--device")
    p.add_argument("--startup-timeout", type=float, default=600)
    args = p.parse_args(argv)
    budget = memory_budget(args.memory_budget, args.device, args.gpu_fraction)
    models = store(args)
    configs = {d: json.loads((Path(d) / "config.json").read_text()) for d in set(models.values())}
    vocab = min(c["vocab_size"] for c in configs.values())
    args.max_token_id = min(10000, vocab - 1)
    ranked, arrivals = skewed_poisson(list(models), args.rate, args.duration, args.zipf, args.seed)
    prompts = make_prompts(len(arrivals), args, args.seed + 1)
    weights = sum(2 * num_params(configs[d]) for d in models.values())
    if weights <= budget:
        print(f"warning: the models' weights ({weights / 2**30:.1f} GiB) fit the budget ({budget / 2**30:.1f} GiB): "
              "little will be evicted; give a smaller --memory-budget", file=sys.stderr, flush=True)
    base = dict(environment(), benchmark="B8", models=ranked, memory_budget_bytes=budget, weights_bytes=weights,
                weights_over_budget=round(weights / budget, 2), rate=args.rate,
                duration=args.duration, zipf=args.zipf, seed=args.seed, input_len=args.input_len,
                output_len=args.output_len, max_model_len=args.max_model_len, load_format=args.load_format)
    summaries, status = {}, 0
    for policy in args.policies.split(","):
        settings = dict(memory_budget_bytes=budget, eviction=policy)
        with Server(models, args, None, settings, preload=False, load_format=args.load_format) as server:
            server.wait_ready(args.startup_timeout, models=[])
            for name in {directory: name for name, directory in models.items()}.values():
                run(warm_up(server.url, name, args))  # one model per checkpoint: its kernels compile here
            results, log, seconds = run(drive(server.url, arrivals, prompts, args.output_len, args.poll_interval))
        summaries[policy] = summarize(arrivals, results, log, seconds)
        emit(dict(base, eviction=policy, **summaries[policy]))
        status |= summaries[policy]["failed"] > 0
    if set(POLICIES) <= set(summaries):
        sleep, unload = summaries["sleep"], summaries["unload"]
        emit(dict(base, eviction="sleep_vs_unload", **{
            f"{key}_ratio": round(sleep[key] / unload[key], 3) for key in ("ttft_ms_p50", "ttft_ms_p99",
                                                                          "ttft_ms_p50_waited", "ttft_ms_p99_waited")
            if sleep[key] and unload[key]}))
    return status


if __name__ == "__main__":
    sys.exit(main())
