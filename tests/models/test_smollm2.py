"""The real SmolLM2-135M-Instruct (Llama architecture, tied embeddings, GQA)."""
import pytest

from corral import LLM, SamplingParams
from tests.models.helpers import reference_generate
from tests.tiny_models import load_reference

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "中国的首都是",
]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", max_model_len=512)


def test_greedy_output_matches_transformers(smol, smollm2_dir):
    reference = load_reference(smollm2_dir)
    tokenizer = smol.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    outputs = smol.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    for ids, output in zip(prompt_ids, outputs):
        expected, _ = reference_generate(reference, ids, num_new=64)
        assert output.outputs[0].token_ids == expected


def test_chat_answers_paris(smol):
    output = smol.chat([{"role": "user", "content": "What is the capital of France?"}],
                       SamplingParams(temperature=0, max_tokens=32))[0]
    assert "Paris" in output.outputs[0].text
    assert output.outputs[0].finish_reason == "stop"
