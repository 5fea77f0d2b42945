"""Shared by the model tests and others: greedy decoding with transformers as the reference, the prompts
it is run on, and the check that corral matches it on a model directory."""
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


YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def short_prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 33)]


def long_prompts(max_positions: int, num_new: int) -> list[list[int]]:
    """Prompts whose last generated token sits at the final position the model has."""
    rng = random.Random(1)
    return [[rng.randrange(3, 500) for _ in range(n)] for n in (max_positions // 2, max_positions - num_new)]


def assert_matches_transformers(model_dir, prompts: list[list[int]], num_new: int = 8):
    reference = load_reference(model_dir)
    llm = LLM(str(model_dir), dtype="float32", device="cpu")
    params = SamplingParams(temperature=0, max_tokens=num_new, ignore_eos=True, logprobs=1)
    for prompt, output in zip(prompts, llm.generate(prompts, params)):
        tokens, logprobs = reference_generate(reference, prompt, num_new)
        completion = output.outputs[0]
        assert completion.token_ids == tokens
        assert [lp.logprob for lp in completion.logprobs] == pytest.approx(logprobs, abs=1e-4)
