"""Where B1's wall time goes: every engine step of one full B1 run, timed by phase and grouped by
the batch it ran. `--workload b4` runs B4's saturated case instead, with no server: 200 requests of
1024 random ids and 128 output tokens, at most 128 in flight, each replaced as soon as it finishes,
under the server's default step budget; its wall time is what the engine alone gives that load.

    python -m benchmarks.step_phases --model qwen3-0.6b
    python -m benchmarks.step_phases --model qwen3-4b --workload b4
    python -m benchmarks.step_phases --model qwen3-4b --workload b4 --profile   # then its kernels, profiled
    python -m benchmarks.step_phases --model qwen3-4b --structured-outputs all --tokenizer .bench_tokenizer

Each engine step returns the tokens of one launched group (one step, or a multi-step decode group);
its wall time is charged to that group. The scheduler's `schedule` and `update` (where grammars take
their tokens), the deferred sampling (`sample`: a step's bitmasks filled, its sampler enqueued) and
`schedule_continuation` are host work, hidden behind the device while an async continuation runs;
`wait` is the host waiting for a step's tokens: near zero, the device waits for the host instead.
For decode groups the KV bytes read are printed beside the time, so the achieved bandwidth shows
how far each batch size is from the attention floor.
"""
import argparse
import itertools
import time
from collections import defaultdict

import torch

from benchmarks.common import emit, environment, model_dir
from benchmarks.gpu_timeline import profiler_timeline
from benchmarks.throughput import B1_SCHEMAS, b1_workload, b2_workload, warm_up
from corral.config import EngineArgs, EngineConfig
from corral.engine.core import EngineCore
from corral.engine.model_runner import InFlight
from corral.engine.request import Request

HOST_PHASES = ("schedule", "schedule_continuation", "update", "sample", "wait")

BATCH_BINS = (1, 16, 64, 128, 192, 256, 513)
B4_REQUESTS, B4_IN_FLIGHT = 200, 128


def traced(fn, name: str, clock: dict):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        clock[name] = time.perf_counter() - start
        return result
    return wrapper


def batch_bin(num_seqs: int) -> str:
    for lo, hi in zip(BATCH_BINS, BATCH_BINS[1:]):
        if lo <= num_seqs < hi:
            return f"{lo}-{hi - 1}"
    return "?"


def workload_requests(args, b4: bool, seed: int, tag: str = "") -> list[Request]:
    """B4's requests (greedy, as its client asks) or B1's, drawn with `seed`."""
    if b4:
        prompts, params = b2_workload(B4_REQUESTS, seed=seed, temperature=0.0)
    else:
        prompts, params = b1_workload(seed=seed, structured=args.structured_outputs, schema=args.schema)
    return [Request(f"{tag}{i}", p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]


def closed_loop(engine: EngineCore, requests: list[Request], in_flight: int, step=None) -> int:
    """Runs `requests` with at most `in_flight` of them in the engine, each one that finishes replaced by
    the next (as a client holding that many connections does); returns the output tokens. `step`: what
    runs one engine step and returns its outputs (default: engine.step)."""
    step = step or engine.step
    pending = iter(requests)
    for request in itertools.islice(pending, in_flight):
        engine.add_request(request)
    num_out = 0
    while engine.has_unfinished_requests():
        outputs = step()
        num_out += sum(len(o.new_token_ids) for o in outputs)
        for _ in range(sum(o.finish_reason is not None for o in outputs)):
            if (request := next(pending, None)) is not None:
                engine.add_request(request)
    return num_out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--num-scheduler-steps", type=int, default=1)
    ap.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false")
    ap.add_argument("--structured-outputs", default="none", choices=["none", "all", "mixed"],
                    help="B1 with every request (or every other one) constrained to a JSON schema")
    ap.add_argument("--schema", default="text", choices=sorted(B1_SCHEMAS), help="the JSON schema of B1_SCHEMAS")
    ap.add_argument("--tokenizer", help="a folder whose tokenizer files the model folder gets (a grammar needs one)")
    ap.add_argument("--workload", default="b1", choices=["b1", "b4"])
    ap.add_argument("--profile", action="store_true",
                    help="after the timed run, run the load again (other prompts) under torch.profiler and print "
                         "the device time by kernel")
    args = ap.parse_args()
    b4 = args.workload == "b4"
    directory = model_dir(args.model, tokenizer=args.tokenizer)
    server_defaults = EngineArgs()
    engine = EngineCore(EngineConfig(directory, load_format="dummy", max_model_len=4096,
                                     max_num_seqs=server_defaults.max_num_seqs if b4 else 512,
                                     max_num_batched_tokens=server_defaults.max_num_batched_tokens if b4 else 16384,
                                     num_scheduler_steps=args.num_scheduler_steps,
                                     async_scheduling=args.async_scheduling))
    kv_bytes = engine._kv_bytes_per_token()
    warm_up(engine, workload="B2" if b4 else "B1", structured=args.structured_outputs, schema=args.schema)

    clock, groups_launched = {}, []
    for name in ("schedule", "schedule_continuation", "update"):
        setattr(engine.scheduler, name, traced(getattr(engine.scheduler, name), name, clock))
    engine.runner.sample = traced(engine.runner.sample, "sample", clock)
    step_result = InFlight.step_result
    InFlight.step_result = traced(step_result, "wait", clock)
    launch = engine.runner.launch

    def launch_recorded(out, num_steps=1, previous=None, **kwargs):
        decode = all(s.num_new_tokens == 1 for s in out.scheduled)
        context = sum(s.num_computed_tokens + s.num_new_tokens for s in out.scheduled)
        groups_launched.append(dict(
            num_steps=num_steps, decode=decode, num_seqs=len(out.scheduled), num_tokens=out.num_tokens,
            continuation=previous is not None,
            kv_read=kv_bytes * (num_steps * context + len(out.scheduled) * num_steps * (num_steps - 1) // 2)))
        return launch(out, num_steps, previous, **kwargs)

    engine.runner.launch = launch_recorded
    requests = workload_requests(args, b4, seed=2 if b4 else 0)
    torch.cuda.synchronize()
    wall_start, walls = time.perf_counter(), []

    def step():
        clock.clear()
        t = time.perf_counter()
        outputs = engine.step()
        walls.append((time.perf_counter() - t, {name: clock.get(name, 0.0) for name in HOST_PHASES}))
        return outputs

    num_out = closed_loop(engine, requests, B4_IN_FLIGHT if b4 else len(requests), step)
    wall = time.perf_counter() - wall_start
    InFlight.step_result = step_result

    # step k returns the tokens of the k-th group launched (a continuation is launched one step early)
    groups = defaultdict(lambda: defaultdict(float))
    for step, (step_wall, phases) in zip(groups_launched, walls):
        g = groups["prefill+decode" if not step["decode"] else f"decode {batch_bin(step['num_seqs'])}"]
        g["engine_steps"] += 1
        g["continuations"] += step["continuation"]
        g["model_steps"] += step["num_steps"]
        g["wall"] += step_wall
        for name, seconds in phases.items():
            g[name] += seconds
        g["tokens"] += step["num_tokens"]
        g["kv_read"] += step["kv_read"]
    print(f"{args.workload.upper()} {args.model}: {num_out} output tokens in {wall:.2f} s = {num_out / wall:,.0f} tok/s; "
          f"{len(walls)} engine steps, {sum(s['num_steps'] for s in groups_launched)} model steps")
    print(f"{'group':16s} {'steps':>6s} {'async':>6s} {'model':>6s} {'wall s':>7s} {'share':>6s} "
          f"{'ms/model step':>13s} {'tokens':>8s} {'host ms':>8s} {'wait ms':>8s} {'KV GB':>7s} {'KV TB/s':>7s}")
    for name in sorted(groups, key=lambda n: (n[0] != "p", int(n.split()[-1].split("-")[0]) if n[0] == "d" else 0)):
        g = groups[name]
        print(f"{name:16s} {int(g['engine_steps']):6d} {int(g['continuations']):6d} {int(g['model_steps']):6d} "
              f"{g['wall']:7.2f} {g['wall'] / wall:6.1%} {g['wall'] / g['model_steps'] * 1e3:13.3f} {int(g['tokens']):8d} "
              f"{sum(g[n] for n in HOST_PHASES[:-1]) / g['engine_steps'] * 1e3:8.3f} "
              f"{g['wait'] / g['engine_steps'] * 1e3:8.3f} {g['kv_read'] / 1e9:7.1f} "
              f"{g['kv_read'] / g['wall'] / 1e12:7.2f}")
    host = {name: sum(g[name] for g in groups.values()) for name in HOST_PHASES}
    print("host s: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in host.items())
          + "; with async scheduling the device runs meanwhile, except while the host waits")
    emit(dict(environment(), benchmark=f"{args.workload.upper()}-phases", model=args.model, seconds=round(wall, 2),
              async_scheduling=args.async_scheduling, structured_outputs=args.structured_outputs, schema=args.schema,
              output_tok_s=round(num_out / wall, 1), host_s={k: round(v, 2) for k, v in host.items()},
              groups={k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in groups.items()}))
    if args.profile:
        profile(engine, args, b4)


def profile(engine: EngineCore, args, b4: bool):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    requests = workload_requests(args, b4, seed=3 if b4 else 1, tag="profile-")
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        closed_loop(engine, requests, B4_IN_FLIGHT if b4 else len(requests))
        torch.cuda.synchronize()
    print(f"profiled run (other prompts): {time.perf_counter() - start:.2f} s")
    print(profiler_timeline(prof).report(top=30))


if __name__ == "__main__":
    main()
