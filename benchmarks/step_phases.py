"""Where one engine step's wall time goes: host phases timed with a device sync around each."""
import argparse
import time
from collections import defaultdict

import torch

from benchmarks.common import model_dir
from benchmarks.throughput import b1_workload
from corral.config import EngineConfig
from corral.engine.core import EngineCore
from corral.engine.request import Request
from corral.engine.sampler import SamplingMetadata
from corral.sampling_params import SamplingParams


def timed_step(engine: EngineCore, acc: dict):
    runner, clock = engine.runner, time.perf_counter

    def mark(name, start):
        torch.cuda.synchronize()
        now = clock()
        acc[name] += now - start
        return now

    t = clock()
    out = engine.scheduler.schedule()
    t = mark("schedule", t)
    input_ids, positions, metadata, rows = runner.prepare(out)
    t = mark("prepare", t)
    if runner.graph_runner is not None and runner.graph_runner.can_run(metadata, input_ids.shape[0]):
        acc["graph_steps"] += 1
    logits = runner._forward(input_ids, positions, metadata, rows)
    t = mark("forward+lm_head", t)
    requests = [s.request for s in out.scheduled if s.samples]
    sampling = SamplingMetadata.build(requests, runner.vocab_size, runner.device)
    t = mark("sampling_metadata", t)
    result = runner.sampler(logits, sampling)
    t = mark("sample", t)
    tokens = result.sampled_token_ids.tolist()
    t = mark("to_host", t)
    engine.scheduler.update(out, [[t] for t in tokens])
    mark("update", t)
    acc["steps"] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    engine = EngineCore(EngineConfig(model_dir(args.model), load_format="dummy", max_model_len=4096,
                                     max_num_seqs=512, max_num_batched_tokens=16384))
    prompts, params = b1_workload(args.num_requests)
    warmup = [SamplingParams(ignore_eos=True, max_tokens=n) for n in range(1, 33)]
    for i, (p, sp) in enumerate(zip(b1_workload(32, seed=1)[0], warmup)):
        engine.add_request(Request(f"warmup-{i}", p, sp))
    while engine.has_unfinished_requests():
        engine.step()
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(Request(str(i), p, sp))
    acc = defaultdict(float)
    for _ in range(args.steps):
        timed_step(engine, acc)
    steps = acc.pop("steps")
    graph_steps = acc.pop("graph_steps")
    total = sum(acc.values())
    print(f"{int(steps)} steps ({int(graph_steps)} from CUDA graphs), {total / steps * 1000:.2f} ms per step")
    for name, seconds in acc.items():
        print(f"  {name:18s} {seconds / steps * 1000:7.3f} ms  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
