"""The B1 peer on the GPU machine: transformers continuous batching (generate_batch), random weights."""
import argparse
import time

import torch

from benchmarks.common import emit, environment, model_dir
from benchmarks.throughput import b1_workload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--num-requests", type=int, default=64, help="a B1 subset: the peer is slow")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    config = AutoConfig.from_pretrained(model_dir(args.model))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="paged|sdpa").cuda()
    prompts, _ = b1_workload()
    prompts = prompts[:args.num_requests]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.6, eos_token_id=-1,
                           pad_token_id=0)
    model.generate_batch(prompts[:4], generation_config=gen)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = model.generate_batch(prompts, generation_config=gen)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    num_out = sum(len(o.generated_tokens) for o in outputs.values())
    emit(dict(environment(), benchmark="B1-peer-transformers", model=args.model, requests=len(prompts),
              max_new_tokens=args.max_new_tokens, seconds=round(seconds, 2), output_tokens=num_out,
              output_tok_s=round(num_out / seconds, 1)))


if __name__ == "__main__":
    main()
