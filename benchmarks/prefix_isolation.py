"""What keeping callers' prefix caches apart costs: requests that share a long system prompt, sent
under one salt (every caller shares the cache), under K salts (K API keys), and each under its own.
Prints, per setting, the prompt tokens the prefix cache saved and the wall time; the cost of
isolation is the prefill it no longer saves.

    python -m benchmarks.prefix_isolation --model smollm2-135m-instruct --device cpu
"""
import argparse
import random
import time

from benchmarks.common import emit, environment


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a manifest name or model directory")
    p.add_argument("--device", default=None)
    p.add_argument("--load-format", default="auto", help="dummy: random weights (config.json suffices)")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--system-len", type=int, default=448, help="tokens of the shared system prompt")
    p.add_argument("--question-len", type=int, default=16, help="tokens each request adds")
    p.add_argument("--keys", default="1,4,all", help="salt counts to compare; all: one per request")
    args = p.parse_args(argv)

    from corral import LLM, SamplingParams
    llm = LLM(args.model, device=args.device, load_format=args.load_format,
              max_model_len=args.system_len + args.question_len + 8)
    rng = random.Random(0)
    system = [rng.randrange(100, 10000) for _ in range(args.system_len)]
    prompts = [system + [rng.randrange(100, 10000) for _ in range(args.question_len)]
               for _ in range(args.num_requests)]
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate(prompts[:1], params)  # warm-up
    core = llm.engine.core
    for keys in args.keys.split(","):
        num_salts = args.num_requests if keys == "all" else int(keys)
        core.reset_prefix_cache()
        before = core.stats()
        start = time.perf_counter()
        for i, prompt in enumerate(prompts):  # one after another, as callers arriving apart do
            llm.engine.add_request(f"{keys}-{i}", prompt, params, final_only=True, cache_salt=f"key-{i % num_salts}")
            while llm.engine.has_unfinished_requests():
                llm.engine.step()
        seconds = time.perf_counter() - start
        after = core.stats()
        emit({**environment(), "benchmark": "prefix_isolation", "model": args.model, "salts": num_salts,
              "requests": args.num_requests, "prompt_tokens": after.prefix_cache_query_tokens
              - before.prefix_cache_query_tokens, "cached_tokens": after.prefix_cache_hit_tokens
              - before.prefix_cache_hit_tokens, "seconds": round(seconds, 3)})


if __name__ == "__main__":
    main()
