"""B1 (nano-vllm's bench.py workload) and B2 (vLLM's 1024 in / 128 out) offline throughput."""
import argparse
import random
import time

import torch

from benchmarks.common import emit, environment, model_dir, new_variants, triton_variants
from benchmarks.gpu_timeline import profiler_timeline
from corral.config import KV_CACHE_DTYPES, EngineConfig
from corral.engine.core import EngineCore
from corral.engine.request import Request
from corral.sampling_params import SamplingParams, StructuredOutputsParams


# JSON schemas no output of B1's lengths can complete: every token of every request stays constrained.
# `text` (the default) is one long string field; `array` (integers, at least 2,000 of them) meets a
# slowdown of xgrammar 0.2's matcher, whose cost per token grows with the items taken so far
# (docs/benchmarks.md), so it measures the grammar engine more than the server
B1_SCHEMAS = {
    "text": {"type": "object", "properties": {"text": {"type": "string", "minLength": 100_000}},
             "required": ["text"]},  # more characters than 1,024 tokens of these tokenizers hold
    "array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2000},
}


def b1_workload(num_requests=256, seed=0, structured: str = "none", schema: str = "text"):
    """`structured`: none, all (every request constrained to B1_SCHEMAS[schema]) or mixed (every other one)."""
    rng = random.Random(seed)
    held = StructuredOutputsParams(json=B1_SCHEMAS[schema])
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 1024))] for _ in range(num_requests)]
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=rng.randint(100, 1024),
                             structured_outputs=held if structured == "all" or (structured == "mixed" and i % 2)
                             else None)
              for i in range(num_requests)]
    return prompts, params


def b2_workload(num_requests=1000, seed=0, temperature=0.6):
    """B2's requests; B4's are the same at temperature 0."""
    rng = random.Random(seed)
    prompts = [[rng.randint(0, 10000) for _ in range(1024)] for _ in range(num_requests)]
    return prompts, [SamplingParams(temperature=temperature, ignore_eos=True, max_tokens=128)] * num_requests


def warm_up(engine: EngineCore, workload: str = "B1", structured: str = "none", schema: str = "text"):
    """The workload's shape on other prompts, so that every Triton specialization, cuBLAS
    algorithm and allocator block a timed run meets already exists; then an empty prefix cache."""
    prompts, params = (b1_workload(seed=1, structured=structured, schema=schema) if workload == "B1"
                       else b2_workload(256, seed=1))
    run(engine, prompts, params, "warmup")
    engine.reset_prefix_cache()


def run(engine: EngineCore, prompts, params, tag: str) -> tuple[float, int]:
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(Request(f"{tag}-{i}", p, sp))
    torch.cuda.synchronize()
    start, num_out = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        num_out += sum(len(o.new_token_ids) for o in engine.step())
    torch.cuda.synchronize()
    return time.perf_counter() - start, num_out


def profile(engine: EngineCore, prompts, params):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(Request(f"profile-{i}", p, sp))
    for _ in range(40):  # past the prefills, into steady decode mixed with chunked prefill
        engine.step()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(30):
            engine.step()
        torch.cuda.synchronize()
    print(f"30 steps: {(time.perf_counter() - start) * 1000 / 30:.2f} ms per step (profiled)")
    print(profiler_timeline(prof).report())
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--workload", default="B1", choices=["B1", "B2"])
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--num-scheduler-steps", type=int, default=1)
    ap.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs, one after another")
    ap.add_argument("--profile", action="store_true", help="profile 30 steps after the warm-up and print kernels")
    ap.add_argument("--attention-backend", help="triton or torch (default: by device)")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs the model is split over")
    ap.add_argument("--structured-outputs", default="none", choices=["none", "all", "mixed"],
                    help="B1 with every request (or every other one) constrained to a JSON schema")
    ap.add_argument("--schema", default="text", choices=sorted(B1_SCHEMAS), help="the JSON schema of B1_SCHEMAS")
    ap.add_argument("--tokenizer", help="a folder whose tokenizer files the model folder gets (a grammar needs one)")
    args = ap.parse_args()
    prompts, params = (b1_workload(structured=args.structured_outputs, schema=args.schema) if args.workload == "B1"
                       else b2_workload())
    roofline = b1_roofline(args.model, prompts, params) if args.workload == "B1" else {}
    directory = model_dir(args.model, tokenizer=args.tokenizer)
    config = EngineConfig(directory, load_format="dummy", max_model_len=args.max_model_len,
                          max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                          enforce_eager=args.enforce_eager, num_scheduler_steps=args.num_scheduler_steps,
                          async_scheduling=args.async_scheduling, attention_backend=args.attention_backend,
                          kv_cache_dtype=args.kv_cache_dtype,
                          tensor_parallel_size=args.tensor_parallel_size)
    engine = EngineCore(config)
    warm_up(engine, args.workload, args.structured_outputs, args.schema)
    if args.profile:
        profile(engine, prompts[:128], params[:128])
        return
    for repeat in range(args.repeat):
        engine.reset_prefix_cache()  # each timed run prefills its prompts, none reuses the last one's
        compiled = triton_variants()
        seconds, num_out = run(engine, prompts, params, f"timed{repeat}")
        report(args, engine, prompts, seconds, num_out, repeat, new_variants(compiled, triton_variants()), roofline)


def b1_roofline(model: str, prompts, params) -> dict:
    """This GPU's copy bandwidth and matmul rate, measured now (before the engine takes the memory),
    and B1's roofline from them (benchmarks.ceiling): a run's fraction of it compares machines
    whose speeds differ, as lent GPUs of one kind do by a percent or two."""
    from benchmarks.ceiling import b1_ceilings
    from benchmarks.configs import CONFIGS
    from benchmarks.kernels import ceilings
    copy, matmul = ceilings()
    torch.cuda.empty_cache()
    ceiling = b1_ceilings(CONFIGS[model], list(map(len, prompts)), [sp.max_tokens for sp in params], copy, matmul)
    return {"copy_tb_s": round(copy / 1e12, 3), "matmul_tflop_s": round(matmul / 1e12, 1),
            "roofline_tok_s": round(ceiling["roofline"], 1), "serial_tok_s": round(ceiling["serial"], 1)}


def report(args, engine, prompts, seconds, num_out, repeat, compiled, roofline):
    num_in = sum(map(len, prompts))
    if roofline:
        roofline = dict(roofline, of_roofline=round(num_out / seconds / roofline["roofline_tok_s"], 4),
                        of_serial=round(num_out / seconds / roofline["serial_tok_s"], 4))
    emit(dict(environment(), benchmark=args.workload, model=args.model, seconds=round(seconds, 2),
              output_tokens=num_out, output_tok_s=round(num_out / seconds, 1), **roofline,
              total_tok_s=round((num_out + num_in) / seconds, 1), requests_s=round(len(prompts) / seconds, 2),
              num_kv_blocks=engine.num_blocks, enforce_eager=args.enforce_eager, repeat=repeat,
              num_scheduler_steps=args.num_scheduler_steps, async_scheduling=args.async_scheduling,
              structured_outputs=args.structured_outputs, schema=args.schema if args.structured_outputs != "none" else None,
              tensor_parallel_size=args.tensor_parallel_size,
              attention_backend=args.attention_backend, kv_cache_dtype=args.kv_cache_dtype,
              compiled_during_run=compiled))


if __name__ == "__main__":
    main()
