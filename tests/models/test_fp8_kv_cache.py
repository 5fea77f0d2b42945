"""kv_cache_dtype="fp8": greedy tokens and logprobs match transformers (fp32) whose attention sees its keys and
values rounded to float8 e4m3 as the cache stores them, and the cache holds four times the tokens of fp32's."""
import statistics

import pytest
import torch

from corral import LLM, SamplingParams
from tests.models.helpers import make_prompts, reference_generate
from tests.tiny_models import load_reference

# Our fp32 and transformers' fp32 differ in their last bits, and where that puts a K/V element on the other side of
# an e4m3 rounding boundary, the two caches hold values a step apart: a rare logprob moves by up to about 1e-2 (on
# an H100, one of 72 by 8.7e-3), while nearly all agree to 1e-6. Transformers without the rounding is off by
# 0.07-0.15 at the median.
FLIP_TOLERANCE = 2e-2
MEDIAN_TOLERANCE = 1e-4


def fp8_kv_reference(model_dir):
    """transformers with an attention function that rounds K/V (after rotary, what a KV cache holds) to e4m3,
    saturating at its 448 as the cache does."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def rounded(x):
        return x.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype)

    def fp8_kv_attention(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, rounded(key), rounded(value), attention_mask, **kwargs)

    AttentionInterface.register("corral_fp8_kv", fp8_kv_attention)
    reference = load_reference(model_dir)
    reference.set_attn_implementation("corral_fp8_kv")
    return reference


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_tokens_and_logprobs_match_transformers_with_fp8_keys_and_values(arch, tiny_model_dirs):
    model_dir = tiny_model_dirs[arch]
    reference = fp8_kv_reference(model_dir)
    llm = LLM(str(model_dir), dtype="float32", kv_cache_dtype="fp8", max_num_batched_tokens=24)  # chunked prompts
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    prompts = make_prompts()[:6]
    outputs = llm.generate(prompts, params)
    unrounded_reference = load_reference(model_dir)
    off, off_unrounded = [], []
    for prompt, output in zip(prompts, outputs):
        tokens, logprobs = reference_generate(reference, prompt, 12)
        completion = output.outputs[0]
        assert completion.token_ids == tokens
        ours = [lp.logprob for lp in completion.logprobs]
        assert ours == pytest.approx(logprobs, abs=FLIP_TOLERANCE)
        off += [abs(a - b) for a, b in zip(ours, logprobs)]
        off_unrounded += [abs(a - b) for a, b in zip(ours, reference_generate(unrounded_reference, prompt, 12)[1])]
    assert statistics.median(off) <= MEDIAN_TOLERANCE
    # what the median tells apart: transformers without the rounding is far further off
    assert statistics.median(off_unrounded) > 100 * MEDIAN_TOLERANCE


def test_an_fp8_cache_holds_four_times_the_tokens_of_fp32_in_the_same_memory(tiny_model_dirs):
    model = str(tiny_model_dirs["llama"])
    fp32 = LLM(model, dtype="float32", kv_cache_memory_bytes=1 << 20).engine.core
    fp8 = LLM(model, dtype="float32", kv_cache_memory_bytes=1 << 20, kv_cache_dtype="fp8").engine.core
    assert fp8.num_blocks == 4 * fp32.num_blocks
    assert {layer.kv_cache.dtype for layer in fp8.runner.model.modules() if hasattr(layer, "kv_cache")} == \
        {torch.float8_e4m3fn}


def test_an_unknown_kv_cache_dtype_is_refused_in_one_line(tiny_model_dirs):
    from corral.config import ConfigError
    with pytest.raises(ConfigError, match="kv_cache_dtype must be one of auto, fp8, got 'int4'"):
        LLM(str(tiny_model_dirs["llama"]), kv_cache_dtype="int4")
