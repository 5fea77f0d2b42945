"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens) driven by the official anthropic SDK
against the session's real servers: answers equal the offline model's at temperature 0, streams follow
Anthropic's documented event sequence and add up to the unstreamed answer, token counts equal the
tokenizer's, tool_use inputs validate against their input_schema, and bad input gets the SDK's typed errors
with Anthropic's error body. Tools use the tool server (a longer context, a model whose template shows tools)."""
import asyncio
import json

import anthropic
import httpx
import jsonschema
import pytest

from corral import SamplingParams
from corral.server.anthropic.conversion import chat_request
from corral.server.anthropic.protocol import MessagesRequest
from corral.server.anthropic.serving import stream_events
from corral.server.errors import QueueFullError
from tests.server.helpers import API_KEY

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city.", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}
ADD = {"name": "add", "description": "Add two numbers.", "input_schema": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
# a finished first turn: the assistant called get_weather and the user sends its result
TOOL_TURNS = ASK_WEATHER + [
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"city": "Paris", "unit": "celsius"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees, clear"}]}]
TINY = ["tiny-qwen3", "tiny-llama"]  # no tool format: generic JSON
ERROR_BODY_KEYS = {"type", "error"}
# the SDK's create() no longer takes sampling parameters (newer Claude models fix them); the API still does
GREEDY, SAMPLED = {"extra_body": {"temperature": 0}}, {"extra_body": {"temperature": 1.0}}


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tool_client(tool_server):
    return anthropic.Anthropic(base_url=tool_server.url, api_key="none", max_retries=0, timeout=120)


def offline_chat(offline, model: str, messages: list[dict], max_tokens: int, **kwargs):
    return offline(model).chat(messages, SamplingParams(temperature=0, max_tokens=max_tokens), **kwargs)[0]


def texts(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def reference_count(model_dir, messages: list[dict], **kwargs) -> int:
    """The template's count of a request without `thinking`, which renders with thinking off."""
    from transformers import AutoTokenizer
    return len(AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False, enable_thinking=False, **kwargs))


# --- create --------------------------------------------------------------------------------------------------

def test_a_message_is_the_offline_model_s_answer(client, offline):
    m = client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=12, **GREEDY)
    out = offline_chat(offline, "tiny-llama", HELLO, 12).outputs[0]
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "tiny-llama"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == out.text
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[out.finish_reason]
    assert m.stop_sequence is None
    assert m.usage.output_tokens == len(out.token_ids)


@pytest.mark.parametrize("system", ["You are a terse assistant.",
                                    [{"type": "text", "text": "You are a terse assistant."}]], ids=["string", "blocks"])
def test_the_system_prompt_reaches_the_model(client, offline, model_dirs, system):
    m = client.messages.create(model="tiny-llama", system=system, messages=HELLO, max_tokens=8, **GREEDY)
    reference = [{"role": "system", "content": "You are a terse assistant."}, *HELLO]
    assert texts(m) == offline_chat(offline, "tiny-llama", reference, 8).outputs[0].text
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == reference_count(model_dirs["tiny-llama"],
                                                                                     reference)


def test_a_stop_sequence_ends_the_answer_with_stop_sequence(client):
    whole = texts(client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=20, **GREEDY))
    start = next(i for i in range(2, len(whole) - 2) if whole[i:i + 2].strip() == whole[i:i + 2])
    stop = whole[start:start + 2]
    m = client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=20, **GREEDY,
                               stop_sequences=["never appears", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert texts(m) == whole[:whole.index(stop)]


def test_max_tokens_ends_the_answer_with_max_tokens(client):
    m = client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=3, **GREEDY)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_an_alias_and_anthropic_s_optional_fields_are_accepted(client):
    m = client.messages.create(model="qwen-alias", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}], max_tokens=3,
        metadata={"user_id": "someone"}, thinking={"type": "disabled"}, service_tier="auto",
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 5})
    assert m.model == "tiny-qwen3" and m.usage.output_tokens <= 3


def test_the_beta_route_and_headers_claude_code_sends_are_served(client):
    m = client.beta.messages.create(model="tiny-llama", messages=HELLO, max_tokens=3,
                                    betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"])
    assert m.type == "message" and m.usage.output_tokens <= 3
    assert client.beta.messages.count_tokens(model="tiny-llama", messages=HELLO,
                                             betas=["token-counting-2024-11-01"]).input_tokens > 0


# --- streaming -----------------------------------------------------------------------------------------------

def test_the_stream_follows_anthropic_s_event_sequence_and_equals_the_unstreamed_answer(client):
    kwargs = dict(model="tiny-llama", messages=HELLO, max_tokens=16, **GREEDY)
    whole = client.messages.create(**kwargs)
    events = list(client.messages.create(stream=True, **kwargs))  # the SDK passes pings over
    types = [e.type for e in events]
    deltas = len(types) - 5
    assert deltas >= 1 and types == ["message_start", "content_block_start"] + ["content_block_delta"] * deltas \
        + ["content_block_stop", "message_delta", "message_stop"]
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert events[1].index == 0 and events[1].content_block.type == "text" and events[1].content_block.text == ""
    assert all(e.delta.type == "text_delta" and e.index == 0 for e in events[2:2 + deltas])
    assert "".join(e.delta.text for e in events[2:2 + deltas]) == texts(whole)
    end = events[-2]
    assert end.delta.stop_reason == whole.stop_reason and end.usage.output_tokens == whole.usage.output_tokens
    assert (end.usage.input_tokens + end.usage.cache_read_input_tokens
            == whole.usage.input_tokens + whole.usage.cache_read_input_tokens == start.usage.input_tokens)


def test_each_event_line_names_its_data_s_type_and_a_ping_follows_the_first_block_start(server):
    body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=120,
                      headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = [f.split("\n") for f in raw.strip().split("\n\n")]
    assert all(len(f) == 2 and f[0].startswith("event: ") and f[1].startswith("data: ") for f in frames)
    names = [f[0].removeprefix("event: ") for f in frames]
    assert names == [json.loads(f[1].removeprefix("data: "))["type"] for f in frames]
    assert names[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"] and names.count("ping") == 1


def test_the_sdk_s_stream_helper_assembles_the_unstreamed_message(client):
    kwargs = dict(model="tiny-llama", messages=HELLO, max_tokens=10, **GREEDY)
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == texts(final) == texts(whole)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_a_failure_mid_stream_is_an_error_event(server):
    class Generation:
        request_id, prompt_ids, in_reasoning = "msg_x", [1, 2, 3], False

        @staticmethod
        def tool_parser():
            return None

        @property
        async def outputs(self):
            raise QueueFullError("the queue is full")
            yield

    async def collect():
        return [e async for e in stream_events(server.client("tiny-llama"), Generation())]

    events = asyncio.run(collect())
    assert events[0].startswith("event: message_start\n")
    assert events[-1] == ('event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
                          '"message":"the queue is full"}}\n\n')


# --- thinking ------------------------------------------------------------------------------------------------

def test_qwen3_thinking_is_a_thinking_block(client, offline):
    m = client.messages.create(model="tiny-qwen3", messages=HELLO, max_tokens=12, **GREEDY,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    raw = offline_chat(offline, "tiny-qwen3", HELLO, 12).outputs[0].text
    assert "</think>" not in raw  # a random model: the whole output is inside the prompt's <think>
    assert [b.type for b in m.content] == ["thinking"]
    assert m.content[0].thinking == raw and m.content[0].signature == ""


@pytest.mark.parametrize("thinking", [{"thinking": {"type": "disabled"}}, {}], ids=["disabled", "absent"])
def test_thinking_disabled_or_absent_gives_a_text_block(client, offline, thinking):
    m = client.messages.create(model="tiny-qwen3", messages=HELLO, max_tokens=12, **GREEDY, **thinking)
    raw = offline_chat(offline, "tiny-qwen3", HELLO, 12, chat_template_kwargs={"enable_thinking": False})
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == raw.outputs[0].text


def test_streamed_thinking_is_thinking_deltas_then_a_signature(client):
    kwargs = dict(model="tiny-qwen3", messages=HELLO, max_tokens=12, **GREEDY,
                  thinking={"type": "enabled", "budget_tokens": 1024})
    whole = client.messages.create(**kwargs)
    events = list(client.messages.create(stream=True, **kwargs))
    assert events[1].content_block.type == "thinking"
    assert [e.delta.type for e in events if e.type == "content_block_delta"][-1] == "signature_delta"
    assert "".join(e.delta.thinking for e in events if e.type == "content_block_delta"
                   and e.delta.type == "thinking_delta") == whole.content[0].thinking


def test_an_assistant_turn_s_thinking_reaches_the_template_as_its_reasoning():
    body = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "They greet me.", "signature": "s"},
                                          {"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "Bye"}]})
    assistant = chat_request(body).message_dicts()[1]
    assert assistant == {"role": "assistant", "content": "Hello!", "reasoning_content": "They greet me."}


# --- count_tokens --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TINY)
def test_count_tokens_is_the_tokenizer_s_count_of_the_prompt(client, model_dirs, model):
    system, messages = "Be brief.", [*HELLO, {"role": "assistant", "content": "Fine."},
                                     {"role": "user", "content": "And you?"}]
    counted = client.messages.count_tokens(model=model, system=system, messages=messages)
    assert counted.input_tokens == reference_count(model_dirs[model], [{"role": "system", "content": system},
                                                                       *messages])


def test_count_tokens_counts_a_tool_conversation_as_the_template_renders_it(tool_client, tool_models):
    counted = tool_client.messages.count_tokens(model="qwen3-tools", messages=TOOL_TURNS, tools=TOOLS)
    reference = [ASK_WEATHER[0], {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 degrees, clear"}]
    openai_tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                      "parameters": t["input_schema"]}} for t in TOOLS]
    assert counted.input_tokens == reference_count(tool_models["qwen3-tools"], reference, tools=openai_tools)


# --- tools ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TINY)
def test_tool_choice_any_gives_tool_use_whose_input_matches_its_schema(tool_client, model):
    for _ in range(2):
        m = tool_client.messages.create(model=model, messages=ASK_WEATHER, tools=TOOLS, max_tokens=300,
                                        tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                        **SAMPLED)
        assert m.stop_reason == "tool_use"
        (use,) = [b for b in m.content if b.type == "tool_use"]
        assert use.id.startswith("toolu_") and use.name in SCHEMAS
        jsonschema.validate(use.input, SCHEMAS[use.name])


@pytest.mark.parametrize("model", TINY)
def test_a_named_tool_is_used_with_input_matching_its_schema(tool_client, model):
    m = tool_client.messages.create(model=model, messages=ASK_WEATHER, tools=TOOLS, max_tokens=200,
                                    tool_choice={"type": "tool", "name": "add"}, **SAMPLED)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]
    assert m.content[0].name == "add"
    jsonschema.validate(m.content[0].input, SCHEMAS["add"])


@pytest.mark.parametrize("tool_choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}],
                         ids=["any", "named"])
def test_streamed_tool_use_assembles_to_the_unstreamed_one(tool_client, tool_choice):
    kwargs = dict(model="tiny-llama", messages=ASK_WEATHER, tools=TOOLS, tool_choice=tool_choice, max_tokens=300,
                  **GREEDY)
    whole = tool_client.messages.create(**kwargs)
    events = list(tool_client.messages.create(stream=True, **kwargs))
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert starts and all(b.type == "tool_use" and b.input == {} for b in starts)
    assert {e.delta.type for e in events if e.type == "content_block_delta"} == {"input_json_delta"}
    with tool_client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == whole.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in whole.content]


@pytest.mark.parametrize("model", [*TINY, "qwen3-tools"])
def test_a_tool_result_turn_is_answered(tool_client, model):
    m = tool_client.messages.create(model=model, messages=TOOL_TURNS, tools=TOOLS, max_tokens=200,
                                    tool_choice={"type": "tool", "name": "get_weather"}, **GREEDY)
    jsonschema.validate(m.content[0].input, SCHEMAS["get_weather"])
    failed = [*TOOL_TURNS[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
         "content": [{"type": "text", "text": "the weather service is down"}]},
        {"type": "text", "text": "Try again."}]}]
    m = tool_client.messages.create(model=model, messages=failed, tools=TOOLS, max_tokens=8, **GREEDY)
    assert m.stop_reason in ("end_turn", "max_tokens", "tool_use")


# --- errors --------------------------------------------------------------------------------------------------

def anthropic_error(info, kind: str) -> str:
    body = info.value.body
    assert set(body) == ERROR_BODY_KEYS and body["type"] == "error" and body["error"]["type"] == kind, body
    return body["error"]["message"]


def test_a_missing_max_tokens_is_a_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body={"model": "tiny-llama", "messages": HELLO}, cast_to=anthropic.types.Message)
    assert "max_tokens" in anthropic_error(info, "invalid_request_error")


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="claude-sonnet-4-5", messages=HELLO, max_tokens=5)
    assert "claude-sonnet-4-5" in anthropic_error(info, "not_found_error")


@pytest.mark.parametrize("credentials", [{"api_key": "wrong"}, {"api_key": None, "auth_token": "wrong"}],
                         ids=["x-api-key", "bearer"])
def test_a_wrong_key_is_an_authentication_error(server, credentials):
    bad = anthropic.Anthropic(base_url=server.url, max_retries=0, **credentials)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="tiny-llama", messages=HELLO, max_tokens=3)
    anthropic_error(info, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model="tiny-llama", messages=HELLO)


def test_the_key_as_a_bearer_token_is_accepted(server):
    bearer = anthropic.Anthropic(base_url=server.url, api_key=None, auth_token=API_KEY, max_retries=0)
    assert bearer.messages.count_tokens(model="tiny-llama", messages=HELLO).input_tokens > 0


@pytest.mark.parametrize("extra, words", [
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "'nope'"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool"}}, "name"),
    ({"tool_choice": {"type": "any"}}, "tools"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "object"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {"type": "object"}}]},
     "web_search_20250305"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}, "image"),
    ({"messages": [*HELLO, {"role": "assistant", "content": "Sure"}]}, "prefill"),
    ({"messages": []}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "context length"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 1.5}, "temperature"),  # Anthropic's range is [0, 1], not OpenAI's [0, 2]
    ({"messages": [*HELLO, {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                               "content": "4"}]}, {"role": "user", "content": "and?"}]},
     "messages.1.content.0: a tool_result block cannot be part of an assistant turn"),
])
def test_bad_input_is_a_bad_request_in_anthropic_s_shape(client, extra, words):
    body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 5, **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body=body, cast_to=anthropic.types.Message)
    assert words in anthropic_error(info, "invalid_request_error")


def test_a_body_past_the_size_limit_is_request_too_large(client, server):
    huge = "x" * (server.config.max_request_bytes + 1)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="tiny-llama", messages=[{"role": "user", "content": huge}], max_tokens=3)
    assert info.value.status_code == 413
    anthropic_error(info, "request_too_large")


def test_messages_are_counted_in_the_request_metrics(client, http):
    client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=2)
    metrics = http.get("/metrics").text
    assert any('endpoint="/v1/messages"' in line and 'model="tiny-llama"' in line and 'status="200"' in line
               for line in metrics.splitlines())


# --- structured output ---------------------------------------------------------------------------------------

def test_an_output_format_s_schema_holds_the_text(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,10}$"},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["city", "days"], "additionalProperties": False}
    m = client.messages.create(model="tiny-llama", messages=HELLO, max_tokens=100, **SAMPLED,
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    assert m.stop_reason == "end_turn"
    jsonschema.validate(json.loads(texts(m)), schema)
