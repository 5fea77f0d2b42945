"""vLLM's side of `benchmarks.run b1json`: B1 through `vllm.LLM` free, then with every request held to B1's
JSON schema (benchmarks.throughput.B1_SCHEMAS, xgrammar, no free whitespace as corral compiles it), in one
process on the GPU machine, dummy bf16 weights, the model folder corral's B1 uses (benchmarks.common.model_dir)
with a real tokenizer (a grammar needs one).

    PYTHONPATH=/tmp/site:$PYTHONPATH python3 -m benchmarks.peer_vllm_structured --model qwen3-4b \
        --tokenizer .bench_tokenizer

`/tmp/site` is the peer kit's vLLM bundle unpacked (its run_vllm_offline.sh does that); vLLM's structured-output
path also imports lm-format-enforcer and outlines_core, which the bundle lacks: `benchmarks/fetch_wheels.sh`
puts them in .whl/ with the server's packages, so install those on the path too. One record per timed
run (`structured_outputs`: none or all) and a last one with the constrained runs as fractions of the free.
"""
import argparse
import os
import sys
import time

from benchmarks.common import emit, environment, model_dir
from benchmarks.throughput import B1_SCHEMAS, b1_workload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-4b")
    ap.add_argument("--tokenizer", default=".bench_tokenizer")
    ap.add_argument("--schema", default="text", choices=sorted(B1_SCHEMAS))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each, alternating free and constrained")
    args = ap.parse_args()
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0",
                       "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    prompts, params = b1_workload()
    max_tokens = [p.max_tokens for p in params]
    inputs = [{"prompt_token_ids": p} for p in prompts]
    schema = StructuredOutputsParams(json=B1_SCHEMAS[args.schema], disable_any_whitespace=True)
    free = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m, detokenize=False) for m in max_tokens]
    held = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m, detokenize=False,
                           structured_outputs=schema) for m in max_tokens]
    start = time.perf_counter()
    llm = LLM(model=model_dir(args.model, tokenizer=args.tokenizer), load_format="dummy",
              dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.9, seed=0)
    base = dict(environment(), benchmark="B1-peer-vllm", model=args.model, vllm=vllm.__version__,
                init_s=round(time.perf_counter() - start, 1), schema=args.schema)
    warm_prompts, warm_params = b1_workload(num_requests=32, seed=1)
    for constrained in (False, True):  # the grammar's compile and the bitmask kernels before any timed run
        llm.generate([{"prompt_token_ids": p} for p in warm_prompts],
                     [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=64, detokenize=False,
                                     structured_outputs=schema if constrained else None)] * len(warm_params),
                     use_tqdm=False)
    rates = {"none": [], "all": []}
    for repeat in range(args.repeat):
        for label, sampling in (("none", free), ("all", held)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            outputs = llm.generate(inputs, sampling, use_tqdm=False)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
            rates[label].append(sum(max_tokens) / seconds)
            emit(dict(base, structured_outputs=label, repeat=repeat, seconds=round(seconds, 2),
                      output_tokens=num_out, output_tokens_asked=sum(max_tokens),
                      output_tok_s=round(rates[label][-1], 1)))
    best_free = max(rates["none"])
    emit(dict(base, structured_outputs="all_vs_none", free_tok_s=[round(r, 1) for r in rates["none"]],
              constrained_tok_s=[round(r, 1) for r in rates["all"]],
              ratios=[round(r / best_free, 3) for r in rates["all"]]))
    sys.stdout.flush()
    os._exit(0)  # vLLM's in-process engine needs no teardown


if __name__ == "__main__":
    main()
