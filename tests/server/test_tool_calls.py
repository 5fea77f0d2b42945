"""Tool calling on /v1/chat/completions with the official openai client: `required` and a named function
give calls whose arguments validate against the tool's parameters whatever the weights (a grammar holds
them), streamed chunks reassemble to the same calls, a model without a tool format gets the tools in its
system message, a template that shows tools renders a tool conversation as transformers does, and bad
tools get 400 naming the parameter. Strings are bounded by patterns (see test_structured_outputs).

The tiny models' byte-level tokenizer spends about a token per character, and the generic tool prompt
with two tools is some 800 tokens, past the session server's 512: these tests serve the same tiny
models with a longer context, and a third whose chat template shows tools (Qwen3's)."""
import json

import httpx
import jsonschema
import openai
import pytest


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TINY = ["tiny-qwen3", "tiny-llama"]  # no tool format: generic JSON
NAMED = {"type": "function", "function": {"name": "get_weather"}}

# a finished first turn: the assistant called get_weather (arguments as OpenAI sends them, JSON text)
TWO_TURNS = MESSAGES + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city":"Paris","unit":"celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, clear"}]


@pytest.fixture(scope="module")
def client(tool_server):
    return openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tool_http(tool_server):
    with httpx.Client(base_url=tool_server.url, timeout=120) as client:
        yield client


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def streamed(chunks) -> tuple[list[dict], str | None, str]:
    """Calls, finish_reason and content of a stream, reassembled as OpenAI clients do: a call's first
    delta brings its id and name, later ones with its index add to its arguments."""
    calls, finish_reason, content = {}, None, ""
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                call["id"] = d.id
            if d.function and d.function.name:
                call["name"] = d.function.name
            if d.function and d.function.arguments:
                call["arguments"] += d.function.arguments
        finish_reason = choice.finish_reason or finish_reason
    return [calls[i] for i in sorted(calls)], finish_reason, content


@pytest.mark.parametrize("model", TINY)
def test_required_gives_a_call_whose_arguments_match_the_tool_parameters(client, model):
    for seed in range(3):
        r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=300, temperature=1.0,
                                                  seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_required_with_parallel_calls_gives_valid_calls(client):
    r = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, tools=TOOLS,
                                              tool_choice="required", max_tokens=400, temperature=1.0, seed=1)
    calls = calls_of(r.choices[0].message)
    assert calls
    for name, arguments in calls:
        jsonschema.validate(arguments, PARAMETERS[name])


@pytest.mark.parametrize("model", TINY)
def test_a_named_function_is_called_with_arguments_matching_its_parameters(client, model):
    for seed in range(3):
        r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                                  max_tokens=200, temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "tool_calls"
        ((name, arguments),) = calls_of(r.choices[0].message)
        assert name == "get_weather"
        jsonschema.validate(arguments, PARAMETERS["get_weather"])


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
def test_streamed_calls_reassemble_to_the_non_streamed_ones(client, model, tool_choice):
    kwargs = dict(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False,
                  max_tokens=300, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls, finish_reason, content = streamed(client.chat.completions.create(stream=True, **kwargs))
    assert finish_reason == whole.finish_reason == "tool_calls" and content == ""
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("call_") for c in calls)


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("stream", [False, True])
def test_auto_on_a_model_without_a_tool_format_answers(client, model, stream):
    kwargs = dict(model=model, messages=MESSAGES, tools=TOOLS, max_tokens=40, temperature=1.0, seed=0,
                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    if stream:
        calls, finish_reason, content = streamed(client.chat.completions.create(stream=True, **kwargs))
        assert finish_reason in ("stop", "length", "tool_calls") and (content or calls)
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        assert choice.message.content or choice.message.tool_calls


def test_a_model_without_a_tool_format_gets_the_tools_in_its_system_message(tool_http):
    from corral.tool_parsers import generic_tool_prompt
    body = {"model": "tiny-llama", "messages": MESSAGES, "tools": TOOLS}
    ids = tool_http.post("/tokenize", json=body).json()["tokens"]
    prompt = tool_http.post("/detokenize", json={"model": "tiny-llama", "tokens": ids}).json()["prompt"]
    assert prompt.startswith("<|im_start|>system\n" + generic_tool_prompt(TOOLS) + "<|im_end|>\n<|im_start|>user\n")


def test_a_model_without_a_tool_format_sees_earlier_calls_and_results_as_turns(tool_http):
    body = {"model": "tiny-llama", "messages": TWO_TURNS, "tools": TOOLS}
    ids = tool_http.post("/tokenize", json=body).json()["tokens"]
    prompt = tool_http.post("/detokenize", json={"model": "tiny-llama", "tokens": ids}).json()["prompt"]
    assert prompt.endswith('<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris", '
                           '"unit": "celsius"}}<|im_end|>\n<|im_start|>user\nResult of get_weather: 18 degrees, '
                           'clear<|im_end|>\n<|im_start|>assistant\n')


def test_tool_choice_none_gives_no_calls(client):
    choice = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, tools=TOOLS,
                                                   tool_choice="none", max_tokens=20, temperature=0).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


def test_a_two_turn_conversation_answers(client):
    for model in TINY:
        r = client.chat.completions.create(model=model, messages=TWO_TURNS, tools=TOOLS, tool_choice=NAMED,
                                                  max_tokens=200, temperature=0)
        jsonschema.validate(json.loads(r.choices[0].message.tool_calls[0].function.arguments),
                            PARAMETERS["get_weather"])


def test_auto_on_smollm2_does_not_fail(openai_client, served_models):
    if "smollm2" not in served_models:
        pytest.skip("smollm2-135m-instruct is not available")
    choice = openai_client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=TOOLS, max_tokens=60,
                                                   temperature=0).choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for name, arguments in calls_of(choice.message):
        assert isinstance(name, str) and isinstance(arguments, dict)


@pytest.mark.parametrize("extra, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}}}], "tool_choice": "required"},
     "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
])
def test_bad_tools_get_400_naming_the_parameter(client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, max_tokens=5, extra_body=extra)
    assert info.value.body["param"] == param, info.value.body


def test_a_template_with_tools_renders_a_tool_conversation_as_transformers_does(tool_http, tool_models):
    from transformers import AutoTokenizer
    body = {"model": "qwen3-tools", "messages": TWO_TURNS, "tools": TOOLS}
    ids = tool_http.post("/tokenize", json=body).json()["tokens"]
    reference = [dict(m) for m in TWO_TURNS]  # transformers' documented form: arguments as an object
    reference[1] = {**reference[1], "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]}
    tokenizer = AutoTokenizer.from_pretrained(tool_models["qwen3-tools"])
    assert ids == tokenizer.apply_chat_template(reference, tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
    assert "<tools>" in tokenizer.decode(ids) and "<tool_call>" in tokenizer.decode(ids)


def test_a_template_with_tools_uses_the_model_s_parser_for_auto_and_a_grammar_for_required(client, tool_server):
    from corral.tool_parsers.hermes import HermesToolParser
    assert tool_server.client("qwen3-tools").tool_parser is HermesToolParser
    assert tool_server.client("tiny-qwen3").tool_parser is None  # its template ignores tools
    r = client.chat.completions.create(model="qwen3-tools", messages=TWO_TURNS, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=300, temperature=0)
    ((name, arguments),) = calls_of(r.choices[0].message)
    jsonschema.validate(arguments, PARAMETERS[name])
    r = client.chat.completions.create(model="qwen3-tools", messages=MESSAGES, tools=TOOLS, max_tokens=30,
                                       temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_an_unknown_tool_call_parser_is_refused_at_startup():
    from corral.config import ConfigError
    from corral.server.config import build_config
    with pytest.raises(ConfigError) as info:
        build_config(["some-model"], model_defaults={"tool_call_parser": "hermes2"})
    assert str(info.value) == ("some-model: tool_call_parser must be auto or one of hermes, json, llama3_json, "
                               "got 'hermes2'")
    assert build_config(["some-model"], model_defaults={"tool_call_parser": "hermes"}).models[0].tool_call_parser \
        == "hermes"
