"""Embedding models through the engine (LLM.embed): pooled, normalised hidden states equal to
transformers' (AutoModel's last hidden state pooled the same way) in float32, through chunked prefill,
batches of different lengths and the prefix cache."""
import functools

import pytest
import torch

from corral import LLM
from corral.engine.input_processor import ContextLengthError
from corral.pooling_params import PoolingParams, PoolingParamsError, TaskError
from corral.sampling_params import SamplingParams
from tests.tiny_models import build_embedding_model

BUDGET = 32  # max_num_batched_tokens: longer prompts are prefilled in chunks
TEXTS = ["Hello world! How are you today?",
         "The capital of France is Paris. The capital of China is Beijing. " * 4,  # longer than BUDGET
         "def main",
         "中文文本：你好，世界。"]


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    return build_embedding_model(tmp_path_factory.mktemp("qwen3-embedding"))


@pytest.fixture(scope="module")
def llm(embedding_dir):
    return LLM(str(embedding_dir), device="cpu", dtype="float32", max_model_len=256,
               max_num_batched_tokens=BUDGET, kv_cache_memory_bytes=16 << 20)


@functools.cache
def reference_model(model_dir):
    from transformers import AutoModel
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()


def pooled(model_dir, token_ids: list[int], pooling: str, normalize: bool = True) -> torch.Tensor:
    """transformers' AutoModel: the last hidden state of the prompt, pooled, normalised."""
    model = reference_model(model_dir)
    with torch.no_grad():
        hidden = model(torch.tensor([token_ids])).last_hidden_state[0]
    vector = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[pooling]
    return torch.nn.functional.normalize(vector, dim=-1) if normalize else vector


def assert_close(vector: list[float], expected: torch.Tensor):
    assert len(vector) == expected.shape[0]
    assert torch.allclose(torch.tensor(vector), expected, atol=1e-4, rtol=0), \
        (torch.tensor(vector) - expected).abs().max()


def test_last_token_embeddings_of_a_batch_of_different_lengths_equal_transformers(llm, embedding_dir):
    tokenizer = llm.get_tokenizer()
    outputs = llm.embed(TEXTS)
    lengths = [len(tokenizer.encode(t)) for t in TEXTS]
    assert len(set(lengths)) == len(TEXTS) and max(lengths) > BUDGET  # one prompt is chunked
    for text, out in zip(TEXTS, outputs):
        assert out.prompt_token_ids == tokenizer.encode(text)
        assert_close(out.outputs.embedding, pooled(embedding_dir, out.prompt_token_ids, "last"))
        assert abs(torch.tensor(out.outputs.embedding).norm().item() - 1) < 1e-5


def test_a_prompt_longer_than_several_chunks_is_pooled_from_its_last_chunk(llm, embedding_dir):
    ids = llm.get_tokenizer().encode(TEXTS[1] * 3)
    assert len(ids) > 3 * BUDGET
    (out,) = llm.embed([ids])
    assert_close(out.outputs.embedding, pooled(embedding_dir, ids, "last"))


def test_a_prompt_found_in_the_prefix_cache_gives_the_same_vector(llm, embedding_dir):
    ids = llm.get_tokenizer().encode(TEXTS[1])
    first, second = llm.embed([ids]), llm.embed([ids])
    assert second[0].num_cached_tokens > 0
    assert_close(second[0].outputs.embedding, torch.tensor(first[0].outputs.embedding))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mean_and_cls_pooling_of_chunked_prompts_equal_transformers(embedding_dir, pooling):
    llm = LLM(str(embedding_dir), device="cpu", dtype="float32", max_model_len=256, max_num_batched_tokens=BUDGET,
              kv_cache_memory_bytes=16 << 20, pooling=pooling)
    tokenizer = llm.get_tokenizer()
    for text, out in zip(TEXTS, llm.embed(TEXTS)):
        assert_close(out.outputs.embedding, pooled(embedding_dir, tokenizer.encode(text), pooling))


def test_smollm2_served_for_embeddings_with_mean_pooling_equals_transformers(smollm2_dir):
    llm = LLM(str(smollm2_dir), device="cpu", dtype="float32", max_model_len=256, max_num_batched_tokens=BUDGET,
              kv_cache_memory_bytes=32 << 20, task="embed", pooling="mean", normalize=True)
    tokenizer = llm.get_tokenizer()
    for text, out in zip(TEXTS, llm.embed(TEXTS)):
        assert_close(out.outputs.embedding, pooled(smollm2_dir, tokenizer.encode(text), "mean"))


def test_dimensions_keep_the_first_values_normalised_again(llm):
    full, short = llm.embed(TEXTS[0]), llm.embed(TEXTS[0], PoolingParams(dimensions=16))
    head = torch.tensor(full[0].outputs.embedding[:16])
    assert_close(short[0].outputs.embedding, head / head.norm())


def test_dimensions_past_the_hidden_size_are_refused(llm):
    with pytest.raises(PoolingParamsError, match=r"dimensions must be in \[1, 64\]"):
        llm.embed(TEXTS[0], PoolingParams(dimensions=65))


def test_dimensions_are_refused_for_a_model_not_trained_for_truncation(embedding_dir):
    llm = LLM(str(embedding_dir), device="cpu", dtype="float32", max_model_len=256, kv_cache_memory_bytes=16 << 20,
              pooling="mean")
    with pytest.raises(PoolingParamsError, match="does not support Matryoshka"):
        llm.embed(TEXTS[0], PoolingParams(dimensions=16))


def test_a_prompt_longer_than_the_context_is_refused_naming_the_limit(llm):
    with pytest.raises(ContextLengthError, match="max_model_len is 256"):
        llm.embed([[5] * 257])
    (out,) = llm.embed([[5] * 256])  # the whole context is the prompt's: no token is generated
    assert len(out.outputs.embedding) == 64


def test_truncate_embeds_the_first_max_model_len_tokens(llm):
    ids = list(range(3, 303))
    (truncated,) = llm.embed([ids], truncate=True)
    (first,) = llm.embed([ids[:256]])
    assert truncated.prompt_token_ids == ids[:256]
    assert_close(truncated.outputs.embedding, torch.tensor(first.outputs.embedding))


def test_an_embedding_model_does_not_generate(llm):
    with pytest.raises(TaskError, match="served for embeddings"):
        llm.generate("Hello", SamplingParams(max_tokens=2))


def test_a_generation_model_does_not_embed(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["qwen3"]), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20)
    with pytest.raises(TaskError, match="served for text generation"):
        llm.embed("Hello")
