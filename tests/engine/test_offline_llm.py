"""The offline API as a vLLM user drives it: min_tokens with stop strings, and a failed generate()."""
import pytest

from corral import LLM, SamplingParams
from corral.engine.output_processor import OutputProcessor
from corral.outputs import EngineCoreOutput
from tests.models.helpers import reference_generate
from tests.tiny_models import build_tokenizer, load_reference


@pytest.fixture(scope="module")
def qwen3(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen3"]
    return LLM(str(model_dir), dtype="float32", max_model_len=128), load_reference(model_dir)


def _stream(tokenizer, token_ids, params):
    """Feeds token_ids one step each, as the engine does; returns the final text and stop_reason."""
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, tokenizer.encode("Q:"), params, delta=True)
    text = ""
    for i, token_id in enumerate(token_ids):
        finish = "length" if i == len(token_ids) - 1 else None
        outputs, _ = processor.process([EngineCoreOutput("r", [token_id], finish_reason=finish)])
        text += outputs[0].outputs[0].text
        if outputs[0].finished:
            return text, outputs[0].outputs[0].finish_reason, outputs[0].outputs[0].stop_reason
    raise AssertionError("never finished")


def test_stop_strings_wait_for_min_tokens():
    # vLLM: a stop string counts only where it ends in the text of a token after the first min_tokens
    tokenizer = build_tokenizer()
    text = "Hello world! How are you today?"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    head = next(i for i in range(len(ids)) if tokenizer.decode(ids[:i]) == "Hello world! How")
    assert _stream(tokenizer, ids, SamplingParams(stop=["o"])) == ("Hell", "stop", "o")
    assert _stream(tokenizer, ids, SamplingParams(stop=["o"], min_tokens=head)) == ("Hello world! How are y", "stop", "o")
    # a stop string that begins inside the first min_tokens tokens and ends after them counts
    assert (_stream(tokenizer, ids, SamplingParams(stop=["How are"], min_tokens=head))
            == ("Hello world! ", "stop", "How are"))


def test_min_tokens_holds_off_a_stop_string_of_the_first_tokens(qwen3):
    llm, reference = qwen3
    prompt = [5, 6, 7]
    expected = reference_generate(reference, prompt, 24)[0]
    text = llm.get_tokenizer().decode(expected).rstrip("\ufffd")  # less a character left incomplete
    stop = next(text[i:i + 2] for i in range(len(text)) if "\ufffd" not in text[i:i + 2] and len(text[i:i + 2]) == 2)
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24, ignore_eos=True, stop=[stop])
    output = llm.generate([prompt], params)[0].outputs[0]
    assert output.token_ids == expected
    assert output.text == text and output.finish_reason == "length"


def test_a_prompt_that_fails_validation_leaves_no_request_behind(qwen3):
    llm, reference = qwen3
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[5, 6, 7], [5] * 128], params)
    assert not llm.engine.has_unfinished_requests()
    assert not llm.engine.output_processor.requests
    output = llm.generate([[9, 9]], params)[0]
    assert output.outputs[0].token_ids == reference_generate(reference, [9, 9], 4)[0]


def test_chat_takes_one_sampling_params_per_conversation(qwen3):
    llm, reference = qwen3
    conversations = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Hi there"}]]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 5)]
    outputs = llm.chat(conversations, params)
    for output, n in zip(outputs, (3, 5)):
        assert output.outputs[0].token_ids == reference_generate(reference, output.prompt_token_ids, n)[0]
    with pytest.raises(ValueError, match="2 prompts but 1 sampling params"):
        llm.chat(conversations, params[:1])
