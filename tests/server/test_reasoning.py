"""Qwen3 reasoning: <think>...</think> goes to reasoning_content, streamed or not."""
import pytest

from corral import SamplingParams
from corral.server.reasoning import ReasoningParser, prompt_opens_reasoning, split_reasoning

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.parametrize("text, in_reasoning, expected", [
    ("<think>Rayleigh scattering.</think>\n\nBecause of scattering.", False,
     ("Rayleigh scattering.", "Because of scattering.")),
    ("Because of scattering.", False, (None, "Because of scattering.")),
    ("<think>still thinking", False, ("still thinking", None)),
    ("\n<think>a</think>b", False, ("a", "b")),
    ("Rayleigh.</think>\n\nBlue.", True, ("Rayleigh.", "Blue.")),
    ("thinking without end", True, ("thinking without end", None)),
    ("<think></think>Answer", False, ("", "Answer")),
    ("a < b and <thin crust>", False, (None, "a < b and <thin crust>")),
])
def test_split_reasoning(text, in_reasoning, expected):
    assert split_reasoning(text, in_reasoning) == expected


@pytest.mark.parametrize("text, in_reasoning", [
    ("<think>Rayleigh scattering.</think>\n\nBecause of scattering.", False),
    ("Plain <answer> with </think> later", False),
    ("Rayleigh.</think>\n\nBlue.", True),
    ("<think>x</thi", False),
])
@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_streamed_deltas_add_up_to_the_whole_split(text, in_reasoning, step):
    parser = ReasoningParser(in_reasoning)
    reasoning, content = "", ""
    for i in range(0, len(text), step):
        r, c = parser.feed(text[i:i + step])
        reasoning, content = reasoning + r, content + c
    r, c = parser.flush()
    reasoning, content = reasoning + r, content + c
    want_reasoning, want_content = split_reasoning(text, in_reasoning)
    assert reasoning == (want_reasoning or "") and content == (want_content or "")


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n")


def test_thinking_output_goes_to_reasoning_content(openai_client, offline):
    r = openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, temperature=0, max_tokens=16)
    raw = offline("tiny-qwen3").chat(MESSAGES, SamplingParams(temperature=0, max_tokens=16))[0].outputs[0].text
    assert "</think>" not in raw  # a random model: the whole output is inside the prompt's <think>
    message = r.choices[0].message
    assert message.reasoning_content == raw and not message.content


def test_enable_thinking_false_gives_plain_content(openai_client, offline):
    kwargs = {"chat_template_kwargs": {"enable_thinking": False}}
    r = openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, temperature=0, max_tokens=16,
                                              extra_body=kwargs)
    raw = offline("tiny-qwen3").chat(MESSAGES, SamplingParams(temperature=0, max_tokens=16),
                                     chat_template_kwargs={"enable_thinking": False})[0].outputs[0].text
    message = r.choices[0].message
    assert message.content == raw and getattr(message, "reasoning_content", None) is None


def test_streamed_reasoning_matches_non_streamed(openai_client):
    kwargs = dict(model="tiny-qwen3", messages=MESSAGES, temperature=0, max_tokens=16)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
    assert streamed == whole.reasoning_content
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_models_without_a_reasoning_parser_keep_think_tags_in_content(server):
    assert server.client("tiny-llama").reasoning_parser is None
    assert server.client("tiny-qwen3").reasoning_parser == "qwen3"


def test_reasoning_is_also_given_under_vllm_s_newer_name(openai_client):
    kwargs = dict(model="tiny-qwen3", messages=MESSAGES, temperature=0, max_tokens=16)
    message = openai_client.chat.completions.create(**kwargs).choices[0].message
    assert message.reasoning == message.reasoning_content and message.reasoning
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks) == message.reasoning


def test_an_assistant_turn_s_reasoning_reaches_the_template_under_either_name():
    # Qwen3's template reads reasoning_content; vLLM's newer clients send reasoning
    from corral.server.protocol import ChatCompletionRequest
    for field in ("reasoning", "reasoning_content"):
        body = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Hello", field: "Thought."}])
        assert body.message_dicts()[1] == {"role": "assistant", "content": "Hello", "reasoning_content": "Thought."}
