"""Greedy token-for-token parity with transformers (fp32) on tiny random models."""
import pytest

from corral import LLM, SamplingParams
from tests.models.helpers import NUM_NEW_TOKENS, make_prompts, reference_generate
from tests.tiny_models import load_reference


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
        assert stats.prefix_cache_hit_tokens >= len(prompts) * 32
    if regime == "preemption":
        assert stats.num_preemptions > 0
    if regime == "chunked_prefill":
        assert max(len(p) for p in prompts) > 12
