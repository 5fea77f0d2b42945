"""Greedy token-for-token parity with transformers (fp32) on tiny random models."""
import random

import pytest
import torch

from corral import LLM, SamplingParams
from tests.tiny_models import load_reference

NUM_NEW_TOKENS = 32


def make_prompts(shared_prefix: int = 0, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(3, 500) for _ in range(shared_prefix)]
    lengths = [1, 5, 17, 33, 48, 9, 64, 23, 16, 40]
    return [prefix + [rng.randrange(3, 500) for _ in range(n)] for n in lengths]


def reference_generate(model, prompt: list[int], num_new: int = NUM_NEW_TOKENS) -> tuple[list[int], list[float]]:
    """Plain greedy decoding with transformers' own KV cache; EOS is not special."""
    tokens, logprobs, past = [], [], None
    inputs = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(num_new):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            step = torch.log_softmax(out.logits[0, -1].float(), -1)
            token = int(step.argmax())
            tokens.append(token)
            logprobs.append(step[token].item())
            past, inputs = out.past_key_values, torch.tensor([[token]])
    return tokens, logprobs


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def arch_case(request, tiny_model_dirs):
    model_dir = tiny_model_dirs[request.param]
    return model_dir, load_reference(model_dir)


REGIMES = {
    "plain": dict(shared_prefix=0, engine=dict()),
    "prefix_cache": dict(shared_prefix=40, engine=dict(block_size=16)),
    "preemption": dict(shared_prefix=0, engine=dict(num_kv_blocks=14, max_model_len=160, block_size=16)),
    "chunked_prefill": dict(shared_prefix=0, engine=dict(max_num_batched_tokens=12)),
}


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_tokens_and_logprobs_match_transformers(arch_case, regime):
    model_dir, reference = arch_case
    setup = REGIMES[regime]
    prompts = make_prompts(setup["shared_prefix"])
    llm = LLM(str(model_dir), dtype="float32", **setup["engine"])
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True, logprobs=2)
    outputs = llm.generate(prompts, params)
    if regime == "prefix_cache":  # a second round hits blocks that the first one left cached
        outputs = llm.generate(prompts, params)
    stats = llm.engine.core.stats()

    for prompt, output in zip(prompts, outputs):
        tokens, logprobs = reference_generate(reference, prompt)
        completion = output.outputs[0]
        assert completion.token_ids == tokens
        assert completion.finish_reason == "length"
        ours = [lp.logprob for lp in completion.logprobs]
        assert ours == pytest.approx(logprobs, abs=1e-4)

    if regime == "prefix_cache":
        assert stats["prefix_cache_hit_tokens"] >= len(prompts) * 32
    if regime == "preemption":
        assert stats["num_preemptions"] > 0
    if regime == "chunked_prefill":
        assert max(len(p) for p in prompts) > 12
