"""Embedding throughput: LLM.embed over 1,000 inputs of 256 tokens (random ids) on a Qwen3-Embedding
config with dummy weights; last-token pooling, normalised, as Qwen3-Embedding pools."""
import argparse
import random
import time

import torch

from benchmarks.common import emit, environment
from benchmarks.serving import prepare_model


def inputs(num_inputs: int, input_len: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(0, 10000) for _ in range(input_len)] for _ in range(num_inputs)]


def timed_embed(llm, prompts) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    outputs = llm.embed(prompts)
    sync()
    assert len(outputs) == len(prompts) and all(o.outputs.hidden_size for o in outputs)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-embedding-0.6b")
    ap.add_argument("--num-inputs", type=int, default=1000)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs, one after another")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    from corral import LLM
    llm = LLM(prepare_model(args.model), load_format="dummy", task="embed", pooling="last", device=args.device,
              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens)
    timed_embed(llm, inputs(min(256, args.num_inputs), args.input_len, seed=1))  # warm-up: kernels, allocator
    prompts = inputs(args.num_inputs, args.input_len, seed=0)
    core = llm.engine.core
    for repeat in range(args.repeat):
        core.reset_prefix_cache()  # each run computes its prompts: none is served from the last one's cache
        seconds = timed_embed(llm, prompts)
        num_tokens = args.num_inputs * args.input_len
        emit(dict(environment(), benchmark="embed", model=args.model, num_inputs=args.num_inputs,
                  input_len=args.input_len, seconds=round(seconds, 3), inputs_s=round(args.num_inputs / seconds, 1),
                  prompt_tok_s=round(num_tokens / seconds, 1), max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=core.num_blocks,
                  dtype=str(llm.engine.config.torch_dtype).removeprefix("torch."), repeat=repeat))


if __name__ == "__main__":
    main()
