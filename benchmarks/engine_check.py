"""On the GPU: the Triton backend (eager and with CUDA graphs) gives the torch backend's greedy tokens."""
import random
import sys
import tempfile

import torch

from corral import LLM, SamplingParams
from tests.tiny_models import build_model


def main() -> int:
    failures = 0
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 16, 17, 33, 100, 250, 64)]
    prompts += [prompts[6][:200] + [7, 8, 9]]  # shares a prefix: the prefix cache is hit
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    for arch, extra in [("qwen3", {}), ("llama", {"head_dim": 64, "hidden_size": 256, "num_attention_heads": 4,
                                                  "num_key_value_heads": 1})]:
        with tempfile.TemporaryDirectory() as d:
            build_model(arch, d, dtype=torch.float32, **extra)
            results = {}
            for backend, eager in [("torch", True), ("triton", True), ("triton", False)]:
                llm = LLM(d, dtype="float32", attention_backend=backend, enforce_eager=eager,
                          max_model_len=512, max_num_batched_tokens=256, gpu_memory_utilization=0.3)
                results[(backend, eager)] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
                del llm
                torch.cuda.empty_cache()
            reference = results[("torch", True)]
            for key, tokens in results.items():
                same = sum(a == b for a, b in zip(tokens, reference))
                print(f"{arch} backend={key[0]} eager={key[1]}: {same}/{len(prompts)} sequences identical to torch")
                failures += same != len(prompts)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
