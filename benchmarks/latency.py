"""B3: single-stream decode, batch 1, against the bandwidth floor."""
import argparse
import random
import time

import torch

from benchmarks.common import emit, environment, model_dir
from benchmarks.configs import CONFIGS, decode_weight_bytes
from benchmarks.gpu_timeline import profiler_timeline
from benchmarks.kernels import copy_bandwidth
from corral.config import EngineConfig
from corral.engine.core import EngineCore
from corral.engine.request import Request
from corral.sampling_params import SamplingParams


def decode_ms(engine: EngineCore, prompt_len: int, output_len: int, tag: str) -> float:
    rng = random.Random(prompt_len)
    engine.add_request(Request(tag, [rng.randint(0, 10000) for _ in range(prompt_len)],
                               SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)))
    engine.step()  # prefill and the first token
    torch.cuda.synchronize()
    start, num_tokens = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        num_tokens += sum(len(o.new_token_ids) for o in engine.step())
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / num_tokens * 1000


def profile(engine: EngineCore, prompt_len: int, output_len: int = 64):
    """Kernel totals and GPU idle time over `output_len` batch-1 decode tokens."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ms = decode_ms(engine, prompt_len, output_len, f"profile-{prompt_len}")
    print(f"prompt {prompt_len}: {ms:.3f} ms per token over {output_len} tokens (profiled)")
    print(profiler_timeline(prof).report(top=20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-4b")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--num-scheduler-steps", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="print kernel totals and GPU idle time instead")
    ap.add_argument("--attention-backend", help="triton or torch (default: by device)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs the model is split over")
    args = ap.parse_args()
    config = EngineConfig(model_dir(args.model), load_format="dummy", max_model_len=2048, max_num_seqs=8,
                          enforce_eager=args.enforce_eager, num_scheduler_steps=args.num_scheduler_steps,
                          attention_backend=args.attention_backend, tensor_parallel_size=args.tensor_parallel_size)
    engine = EngineCore(config)
    bandwidth = copy_bandwidth()
    c = CONFIGS[args.model]
    weight_bytes = decode_weight_bytes(c)
    for n in (128, 1024, 77):
        decode_ms(engine, n, 8, f"warmup-{n}")
    if args.profile:
        profile(engine, 128)
        return
    for prompt_len in (128, 1024):
        ms = decode_ms(engine, prompt_len, 512, f"b3-{prompt_len}")
        kv_bytes = engine._kv_bytes_per_token() * (prompt_len + 256)
        floor_ms = (weight_bytes + kv_bytes) / bandwidth * 1000
        emit(dict(environment(), benchmark="B3", model=args.model, prompt_len=prompt_len, output_len=512,
                  ms_per_token=round(ms, 3), floor_ms=round(floor_ms, 3), floor_fraction=round(floor_ms / ms, 3),
                  copy_bandwidth_tb_s=round(bandwidth / 1e12, 2), enforce_eager=args.enforce_eager,
                  num_scheduler_steps=args.num_scheduler_steps, attention_backend=args.attention_backend,
                  tensor_parallel_size=args.tensor_parallel_size))


if __name__ == "__main__":
    main()
